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
from cryptostats.web.errors import MAX_SHOWN_PATH, Handler, error_answer

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's own request id is kept when it is this tame; otherwise we make one.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# The route label of requests no route answers (404s and 405s).
UNMATCHED = "unmatched"
# Method labels: a client may send any token as a method, and each new
# label value would be a new series kept forever.
KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT", "TRACE")
)
OTHER_METHOD = "other"
ANSWERED_METHODS = frozenset(("GET", "HEAD"))


# A random prefix per process and a counter: unique without a system call
# for randomness on every request.
_ID_PREFIX = uuid.uuid4().hex[:12]
_id_counter = itertools.count(1)


def request_id(request: web.BaseRequest) -> str:
    """The caller's X-Request-Id when it is well-formed, else a new one."""
    given = request.headers.get(REQUEST_ID_HEADER)
    if given is not None and REQUEST_ID_RE.fullmatch(given):
        return given

    return f"{_ID_PREFIX}-{next(_id_counter):x}"


class Routes:
    """Finds each request's handler: one dict lookup on its path.

    The API is a fixed set of paths answering GET (and HEAD, which aiohttp
    answers without a body). aiohttp's `Application` router, with its match
    info and application lookup per request, cost about a seventh of a
    /stats answer served from memory (without them: 1.16 times the req/s);
    this is served by aiohttp's low-level `web.Server` instead. A path
    outside the table is a JSON 404, another method on a known path a JSON
    405 with `Allow`; both are counted and logged under the route
    `unmatched`.
    """

    def __init__(
        self, routes: Mapping[str, Handler], *, access_log: bool = True
    ) -> None:
        self._handlers = {
            path: observed(path, handler, access_log=access_log)
            for path, handler in routes.items()
        }
        self._unmatched = observed(UNMATCHED, self._refuse, access_log=access_log)

    @property
    def paths(self) -> tuple[str, ...]:
        """Every path answered."""
        return tuple(self._handlers)

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        handler = self._handlers.get(request.path)
        if handler is None or request.method not in ANSWERED_METHODS:
            handler = self._unmatched

        return await handler(request)

    async def _refuse(self, request: web.BaseRequest) -> NoReturn:
        if request.path in self._handlers:
            raise web.HTTPMethodNotAllowed(request.method, ANSWERED_METHODS)
        raise web.HTTPNotFound()


def observed(route: str, handler: Handler, *, access_log: bool = True) -> Handler:
    """`handler`, giving each request an id and any failure a JSON body, then
    counting, timing and (with `access_log`) logging the answer under the
    route template `route`.

    Each route's handler is wrapped once, at start, rather than through an
    aiohttp middleware: a middleware costs several more calls per request,
    about 6% of a /stats answer served from memory.
    """

    async def answer(request: web.BaseRequest) -> web.StreamResponse:
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


def _log(
    request: web.BaseRequest, route: str, status: int, elapsed_s: float, rid: str
) -> None:
    log.info(
        "http_request",
        method=request.method,
        path=request.path[:MAX_SHOWN_PATH],
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
