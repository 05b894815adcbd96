"""JSON error bodies: `{"error": {"code", "message"}}` for every failure."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web

from cryptostats.messages import dumps

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An error answer: HTTP status, a stable code and a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON response; NaN and Infinity can never be written."""
    return web.Response(
        body=dumps(body),
        status=status,
        content_type="application/json",
        headers=headers,
    )


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> web.Response:
    """The JSON error body every failure uses."""
    return json_response({"error": {"code": code, "message": message}}, status, headers)


@web.middleware
async def errors_as_json(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every failure, ours or aiohttp's, into a JSON error body."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("request_failed", path=request.path)
        return error_response(500, "internal_error", "internal error")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    code = exc.reason.lower().replace(" ", "_")
    # A 405 must say which methods the route takes.
    headers = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else {}

    return error_response(
        exc.status, code, f"{exc.reason}: {request.method} {request.path}", headers
    )
