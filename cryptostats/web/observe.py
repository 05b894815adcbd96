"""Request ids, the access log, HTTP metrics, and quiet protocol errors."""

from __future__ import annotations

import functools
import itertools
import logging
import re
import time
import uuid
from typing import Any

import structlog
from aiohttp import web

from cryptostats import metrics
from cryptostats.web.errors import Handler

log = structlog.get_logger("cryptostats.http_api", actor="http_api")

REQUEST_ID_HEADER = "X-Request-Id"
# A caller's own request id is kept when it is this tame; otherwise we make one.
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._:-]{1,128}")
MAX_LOGGED_PATH = 256
UNMATCHED = "unmatched"


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


def route_label(request: web.Request) -> str:
    """The route template (`/stats`), never the raw path, to bound label values."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id, then count, time and log its answer."""
    started = time.perf_counter()
    rid = request_id(request)
    with structlog.contextvars.bound_contextvars(request_id=rid):
        response = await handler(request)
        response.headers[REQUEST_ID_HEADER] = rid
        elapsed_s = time.perf_counter() - started
        _record(request, response.status, elapsed_s, rid)

    return response


def _record(request: web.Request, status: int, elapsed_s: float, rid: str) -> None:
    route = route_label(request)
    counter, latency = _series(route, request.method, status)
    counter.inc()
    latency.observe(elapsed_s)
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


@functools.lru_cache(maxsize=512)
def _series(route: str, method: str, status: int) -> tuple[Any, Any]:
    # Looking a labelled series up costs more than counting in it; the
    # label values are bounded (route templates, methods, statuses).
    return (
        metrics.HTTP_REQUESTS.labels(route=route, method=method, status=status),
        metrics.HTTP_LATENCY.labels(route=route),
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
