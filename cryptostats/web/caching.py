"""HTTP caching of /stats: fresh until the next tick, validated by observed time."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import NamedTuple

from aiohttp import hdrs, web

from cryptostats.actors.ticker import next_tick


class Validated(NamedTuple):
    """An answer body with its `Last-Modified`, worked out once per quote."""

    body: bytes
    # The quote's observed time to whole seconds, as HTTP dates have it.
    modified_at: datetime
    last_modified: str

    @classmethod
    def of(cls, body: bytes, observed_at: datetime) -> Validated:
        """`body` of the quote observed at `observed_at`."""
        modified_at = observed_at.astimezone(UTC).replace(microsecond=0)
        return cls(body, modified_at, format_datetime(modified_at, usegmt=True))


class _Freshness(NamedTuple):
    second: int
    upcoming_tick_s: float
    cache_control: str


_freshness: dict[str, _Freshness] = {}


def cache_control(cron: str, now_s: float) -> str:
    """`Cache-Control` lasting until the next tick of `cron`.

    A new quote can only arrive after the next tick, so until then a cached
    answer is as good as a fresh one. `now_s` is a Unix time in seconds.
    The value changes once a second at most, and is worked out once then:
    finding the next tick costs more than the rest of a /stats answer
    served from memory.
    """
    second = int(now_s)
    known = _freshness.get(cron)
    if known is not None and known.second == second:
        return known.cache_control

    upcoming_s = known.upcoming_tick_s if known else 0.0
    # Worked out again once it passed, or when the clock was set back.
    if upcoming_s <= now_s or (known is not None and second < known.second):
        after = datetime.fromtimestamp(now_s, UTC)
        upcoming_s = next_tick(cron, after).timestamp()
    max_age_s = max(0, math.ceil(upcoming_s - now_s))
    value = f"public, max-age={max_age_s}"
    _freshness[cron] = _Freshness(second, upcoming_s, value)

    return value


def not_modified(request: web.BaseRequest, modified_at: datetime) -> bool:
    """True when the caller's `If-Modified-Since` already covers `modified_at`.

    As HTTP has it (RFC 9110, 13.1.3): the date is ignored when the request
    also carries `If-None-Match` (we send no ETag, so nothing matches it),
    and when it lies in the future or is not a date (aiohttp's parser
    raises OverflowError on a year or hour too large for a datetime).
    """
    headers = request.headers
    if hdrs.IF_MODIFIED_SINCE not in headers or hdrs.IF_NONE_MATCH in headers:
        return False
    try:
        since = request.if_modified_since
    except OverflowError:
        return False
    if since is None or since > datetime.now(UTC):
        return False

    return modified_at <= since
