"""The `/docs` page: a small HTML and JS renderer of `/openapi.json`.

Its assets ship inside the package and are served by the service itself,
so the page works with no internet access.
"""

from __future__ import annotations

from importlib import resources

from aiohttp import web

from cryptostats.web.errors import Handler

ASSETS = {
    "docs.html": "text/html",
    "docs.js": "text/javascript",
    "docs.css": "text/css",
}


def _read(name: str) -> bytes:
    return resources.files("cryptostats.web").joinpath("static", name).read_bytes()


def routes() -> dict[str, Handler]:
    """The page at `/docs` and each of its assets at `/docs/<name>`."""
    routes = {"/docs": _served("docs.html")}
    for name in ASSETS:
        routes[f"/docs/{name}"] = _served(name)

    return routes


def _served(name: str) -> Handler:
    body, content_type = _read(name), ASSETS[name]

    async def serve(request: web.BaseRequest) -> web.Response:
        response = web.Response(body=body, content_type=content_type)
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    return serve
