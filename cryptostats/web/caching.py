"""HTTP caching of /stats: fresh until the next tick, validated by observed time."""

from __future__ import annotations

import functools
import math
from datetime import UTC, datetime
from email.utils import format_datetime

from aiohttp import web

from cryptostats.actors.ticker import next_tick


def cache_headers(observed_at: datetime, cron: str, now: datetime) -> dict[str, str]:
    """`Cache-Control` lasting until the next tick, and `Last-Modified`.

    A new quote can only arrive after the next tick, so until then a cached
    answer is as good as a fresh one.
    """
    max_age_s = math.ceil((_upcoming_tick(cron, now) - now).total_seconds())

    return {
        "Cache-Control": f"public, max-age={max(0, max_age_s)}",
        "Last-Modified": http_date(observed_at),
    }


_upcoming: dict[str, datetime] = {}


def _upcoming_tick(cron: str, now: datetime) -> datetime:
    # The next tick stays the same until it passes; computing it costs more
    # than the rest of a /stats answer served from memory.
    moment = _upcoming.get(cron)
    if moment is None or moment <= now:
        moment = _upcoming[cron] = next_tick(cron, now)

    return moment


@functools.lru_cache(maxsize=1024)
def http_date(moment: datetime) -> str:
    """`moment` as an HTTP date (whole seconds, GMT).

    Remembered: every /stats answer of a coin formats the same moment
    until its next quote.
    """
    return format_datetime(moment.astimezone(UTC).replace(microsecond=0), usegmt=True)


def not_modified(request: web.Request, observed_at: datetime) -> bool:
    """True when the caller's `If-Modified-Since` already covers `observed_at`."""
    since = request.if_modified_since
    if since is None:
        return False

    return observed_at.replace(microsecond=0) <= since
