"""JSON error bodies: `{"error": {"code", "message"}}` for every failure."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import hdrs, web

from cryptostats.messages import dumps

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

# The most of a request's path that an error body or a log line repeats.
MAX_SHOWN_PATH = 256

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


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


def error_answer(request: web.BaseRequest, exc: Exception) -> web.Response:
    """The JSON error answer for a failure raised while handling `request`.

    Raises:
        web.HTTPException: `exc` itself when it is a redirect or another
            answer below 400, which aiohttp sends as it is.
    """
    if isinstance(exc, ApiError):
        return error_response(exc.status, exc.code, exc.message)
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            raise exc
        return _http_error(request, exc)
    log.error("request_failed", path=request.path, exc_info=exc)
    return error_response(500, "internal_error", "internal error")


def _http_error(request: web.BaseRequest, exc: web.HTTPException) -> web.Response:
    code = exc.reason.lower().replace(" ", "_")
    # A 405 must say which methods the route takes.
    headers = {hdrs.ALLOW: exc.headers[hdrs.ALLOW]} if hdrs.ALLOW in exc.headers else {}

    return error_response(
        exc.status,
        code,
        f"{exc.reason}: {request.method} {request.path[:MAX_SHOWN_PATH]}",
        headers,
    )
