"""What every request goes through (request id, JSON errors, metrics, the
access log), and quiet protocol errors."""

from __future__ import annotations

import itertools
import logging
import re
import time
import uuid
from collections.abc import Mapping
from typing import NoReturn

import structlog
from aiohttp import web

from cryptostats import metrics
from cryptostats.logs import REQUEST_ID, enabled_for
from cryptostats.web.errors import Handler, error_answer

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's own request id is kept when it is this tame; otherwise we make one.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_LOGGED_PATH = 256
# The route label of requests no route answers (404s and 405s).
UNMATCHED = "unmatched"
# Method labels: a client may send any token as a method, and each new
# label value would be a new series kept forever.
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
OTHER_METHOD = "other"


# A random prefix per process and a counter: unique without a system call
# for randomness on every request.
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def request_id(request: web.Request) -> str:
    """The caller's X-Request-Id when it is well-formed, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER, "")
    if REQUEST_ID_RE.fullmatch(given):
        return given

    return f"{_ID_PREFIX}-{next(_id_counter):x}"


def add_routes(
    app: web.Application, routes: Mapping[str, Handler], *, access_log: bool = True
) -> None:
    """Serve each `GET` route through `observed`, and every other path and
    method through `unmatched`."""
    for path, handler in routes.items():
        app.router.add_get(path, observed(path, handler, access_log=access_log))
    app.router.add_route(
        "*", "/{path:.*}", observed(UNMATCHED, unmatched, access_log=access_log)
    )


def observed(route: str, handler: Handler, *, access_log: bool = True) -> Handler:
    """`handler`, giving each request an id and any failure a JSON body, then
    counting, timing and (with `access_log`) logging the answer under the
    route template `route`.

    Each route's handler is wrapped, instead of using an aiohttp middleware:
    aiohttp runs a middleware through several more calls on every request,
    which cost about 6% of a /stats answer served from memory.
    """

    async def answer(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        rid = request_id(request)
        token = REQUEST_ID.set(rid)
        try:
            try:
                response = await handler(request)
            except Exception as exc:  # every failure gets a JSON body
                response = error_answer(request, exc)
            response.headers[REQUEST_ID_HEADER] = rid
            elapsed_s = time.perf_counter() - started
            method = request.method
            if method not in KNOWN_METHODS:
                method = OTHER_METHOD
            metrics.HTTP.observe(route, method, response.status, elapsed_s)
            if access_log and enabled_for(logging.INFO):
                _log(request, route, response.status, elapsed_s, rid)
        finally:
            REQUEST_ID.reset(token)

        return response

    return answer


async def unmatched(request: web.Request) -> NoReturn:
    """A path or method no route answers: 405 when the path takes other
    methods, else 404.

    Raises:
        web.HTTPMethodNotAllowed: another route serves this path.
        web.HTTPNotFound: no route serves this path.
    """
    own = request.match_info.route.resource
    allowed: set[str] = set()
    for resource in request.app.router.resources():
        if resource is not own:
            _, methods = await resource.resolve(request)
            allowed |= methods
    if allowed:
        raise web.HTTPMethodNotAllowed(request.method, allowed)
    raise web.HTTPNotFound()


def _log(
    request: web.Request, route: str, status: int, elapsed_s: float, rid: str
) -> None:
    log.info(
        "http_request",
        method=request.method,
        path=request.path[:MAX_LOGGED_PATH],
        route=route,
        status=status,
        elapsed_ms=round(elapsed_s * 1000, 2),
        remote=request.remote,
        request_id=rid,
    )


class _ProtocolErrorHandler(logging.Handler):
    """Turns aiohttp's "Error handling request" records into one warning event."""

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        log.warning(
            "http_protocol_error",
            error_type=type(error).__name__ if error else None,
            error=str(error)[:200] if error else record.getMessage()[:200],
        )


def protocol_logger() -> logging.Logger:
    """A logger for aiohttp's connection handler that logs no tracebacks.

    aiohttp answers a request line or header over its limits with a 400 and
    logs the parser's exception with a traceback; that is a client's error,
    so it becomes a single warning event instead.
    """
    logger = logging.getLogger("cryptostats.http_protocol")
    logger.propagate = False
    if not logger.handlers:
        logger.addHandler(_ProtocolErrorHandler())

    return logger
