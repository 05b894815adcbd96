"""HTTP caching of /stats: fresh until the next tick, validated by observed time."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from email.utils import format_datetime

from aiohttp import hdrs, web

from cryptostats.actors.ticker import next_tick


def cache_headers(observed_at: datetime, cron: str, now_s: float) -> dict[str, str]:
    """`Cache-Control` lasting until the next tick, and `Last-Modified`.

    A new quote can only arrive after the next tick, so until then a cached
    answer is as good as a fresh one. `now_s` is a Unix time in seconds.
    """
    max_age_s = math.ceil(_upcoming_tick_s(cron, now_s) - now_s)

    return {
        "Cache-Control": f"public, max-age={max(0, max_age_s)}",
        "Last-Modified": http_date(observed_at),
    }


_upcoming_s: dict[str, float] = {}


def _upcoming_tick_s(cron: str, now_s: float) -> float:
    # The next tick stays the same until it passes; computing it costs more
    # than the rest of a /stats answer served from memory.
    moment_s = _upcoming_s.get(cron)
    if moment_s is None or moment_s <= now_s:
        after = datetime.fromtimestamp(now_s, UTC)
        moment_s = _upcoming_s[cron] = next_tick(cron, after).timestamp()

    return moment_s


@functools.lru_cache(maxsize=1024)
def http_date(moment: datetime) -> str:
    """`moment` as an HTTP date (whole seconds, GMT).

    Remembered: every /stats answer of a coin formats the same moment
    until its next quote.
    """
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def not_modified(request: web.Request, observed_at: datetime) -> bool:
    """True when the caller's `If-Modified-Since` already covers `observed_at`.

    As HTTP has it (RFC 9110, 13.1.3): the date is ignored when the request
    also carries `If-None-Match` (we send no ETag, so nothing matches it),
    and when it lies in the future.
    """
    headers = request.headers
    if hdrs.IF_MODIFIED_SINCE not in headers or hdrs.IF_NONE_MATCH in headers:
        return False
    since = request.if_modified_since
    if since is None or since > datetime.now(UTC):
        return False

    return observed_at.replace(microsecond=0) <= since
