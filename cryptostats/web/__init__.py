"""The HTTP side of HttpApi: errors, parameters, observability, OpenAPI, docs."""
