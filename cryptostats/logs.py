"""structlog set-up: JSON lines when stderr is not a terminal, console otherwise."""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

# The id of the HTTP request being answered: every event logged while
# answering it carries it. A plain ContextVar costs less per request than
# structlog's bind_contextvars, and most requests log nothing.
REQUEST_ID: ContextVar[str | None] = ContextVar("cryptostats_request_id", default=None)

_level = logging.INFO


def add_request_id(logger: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """structlog processor: the current request's id, when there is one."""
    rid = REQUEST_ID.get()
    if rid is not None:
        event.setdefault("request_id", rid)
    return event


def enabled_for(level: int) -> bool:
    """Whether events at `level` are logged, without building a logger."""
    return level >= _level


def configure_logging(
    level: str = "info", *, json: bool | None = None, cache: bool = True
) -> None:
    """Route structlog events to stderr at `level`.

    Args:
        level: a standard level name (`debug`, `info`, `warning`, ...).
        json: force JSON (True) or console (False); None picks by tty.
        cache: build each logger once, on its first use. Without it every
            call builds the logger anew, which costs more than a filtered
            call itself; tests turn it off so that
            `structlog.testing.capture_logs` sees loggers already used.
    """
    global _level
    _level = logging.getLevelNamesMapping()[level.upper()]
    use_json = not sys.stderr.isatty() if json is None else json
    renderer, output = (
        _json_output()
        if use_json
        else (structlog.dev.ConsoleRenderer(), structlog.PrintLoggerFactory(sys.stderr))
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            add_request_id,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info
            if use_json
            else structlog.processors.StackInfoRenderer(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_level),
        logger_factory=output,
        cache_logger_on_first_use=cache,
    )


def _json_output() -> tuple[structlog.typing.Processor, Any]:
    """orjson writing bytes: at full load an access-log line rendered by the
    standard json module and printed as text cost a sixth more of a /stats
    answer served from memory."""
    binary = getattr(sys.stderr, "buffer", None)
    if binary is None:
        # A stderr replaced by one without bytes (some test runners).
        return structlog.processors.JSONRenderer(), structlog.PrintLoggerFactory(
            sys.stderr
        )

    return (
        structlog.processors.JSONRenderer(serializer=orjson.dumps),
        structlog.BytesLoggerFactory(binary),
    )
