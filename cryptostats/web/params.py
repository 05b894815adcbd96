"""Query parameters: each parsed once, strictly, into a value or an ApiError.

Bounds live here and the OpenAPI document reads them, so the two agree.
"""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from cryptostats.config import COIN_RE
from cryptostats.messages import from_iso
from cryptostats.web.errors import ApiError

DEFAULT_WINDOW = 10
MIN_WINDOW = 2
MAX_WINDOW = 1000
DEFAULT_LIMIT = 100
MIN_LIMIT = 1
MAX_LIMIT = 1000
MAX_TIME_CHARS = 40


def single_param(request: web.BaseRequest, name: str) -> str | None:
    """The one value of query parameter `name`, or None when absent.

    Raises:
        ApiError: the parameter is repeated.
    """
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise ApiError(
            400, "repeated_parameter", f"parameter {name!r} given {len(values)} times"
        )

    return values[0] if values else None


def parse_coin(request: web.BaseRequest) -> str:
    """The validated `coin` parameter.

    Raises:
        ApiError: missing, repeated or not a coin id.
    """
    coin = single_param(request, "coin")
    if coin is None or coin == "":
        raise ApiError(400, "missing_coin", "query parameter 'coin' is required")
    if not COIN_RE.fullmatch(coin):
        raise ApiError(
            400, "invalid_coin", "'coin' must be 1-64 characters of a-z, 0-9 and '-'"
        )

    return coin


def parse_window(request: web.BaseRequest) -> int:
    """The validated `window` parameter, DEFAULT_WINDOW when absent.

    Raises:
        ApiError: repeated, not an integer, or outside MIN..MAX_WINDOW.
    """
    return _bounded_int(request, "window", DEFAULT_WINDOW, MIN_WINDOW, MAX_WINDOW)


def parse_limit(request: web.BaseRequest) -> int:
    """The validated `limit` parameter of /history, DEFAULT_LIMIT when absent.

    Raises:
        ApiError: repeated, not an integer, or outside MIN..MAX_LIMIT.
    """
    return _bounded_int(request, "limit", DEFAULT_LIMIT, MIN_LIMIT, MAX_LIMIT)


def parse_before(request: web.BaseRequest) -> datetime | None:
    """The validated `before` cursor of /history: an ISO 8601 time with zone.

    Raises:
        ApiError: repeated, or not an ISO 8601 time with a timezone.
    """
    text = single_param(request, "before")
    if text is None:
        return None

    message = "'before' must be an ISO 8601 time with a timezone (2024-05-01T12:00:00Z)"
    if not text.isascii() or len(text) > MAX_TIME_CHARS:
        raise ApiError(400, "invalid_before", message)
    try:
        return from_iso(text)
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_before", message) from None


def _bounded_int(
    request: web.BaseRequest, name: str, default: int, low: int, high: int
) -> int:
    text = single_param(request, name)
    if text is None:
        return default

    message = f"{name!r} must be an integer from {low} to {high}"
    if not (text.isascii() and text.isdigit()) or len(text) > 6:
        raise ApiError(400, f"invalid_{name}", message)
    value = int(text)
    if not low <= value <= high:
        raise ApiError(400, f"invalid_{name}", message)

    return value
