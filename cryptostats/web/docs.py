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
    """The page at `/docs` and its assets at `/docs/<name>`."""
    bodies = {name: _read(name) for name in ASSETS}

    def serve(name: str) -> web.Response:
        response = web.Response(body=bodies[name], content_type=ASSETS[name])
        response.headers["Cache-Control"] = "public, max-age=300"
        return response

    async def page(request: web.Request) -> web.Response:
        return serve("docs.html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ASSETS:
            raise web.HTTPNotFound()
        return serve(name)

    return {"/docs": page, "/docs/{name}": asset}
