"""The baseline: a bare aiohttp handler answering a fixed JSON body.

Run as `python bench/baseline.py PORT`; the service must reach a share of
its requests per second measured in the same run.
"""

from __future__ import annotations

import sys

from aiohttp import web

BODY = (
    b'{"coin":"bitcoin","price":95665.32,"marketCap":1893000000000.0,'
    b'"24hChange":1.2,"observedAt":"2024-12-03T21:17:48.000Z"}'
)


async def answer(request: web.Request) -> web.Response:
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    for path in ("/stats", "/deviation", "/history"):
        app.router.add_get(path, answer)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None)


if __name__ == "__main__":
    main()
