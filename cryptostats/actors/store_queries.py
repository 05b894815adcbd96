"""The queries the Store answers over request/reply, one function per subject.

Every reply is a JSON object; a malformed query raises ValueError, which the
Store turns into a `bad_query` error reply.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from cryptostats import subjects
from cryptostats.actors.ticker import tick_interval_s
from cryptostats.config import COIN_RE, Settings
from cryptostats.messages import from_iso, to_iso
from cryptostats.storage import HistoryQuery, QuoteStore

log = structlog.get_logger("cryptostats.store", actor="store")

MAX_HISTORY_LIMIT = 1000
MAX_COINS_PER_QUERY = 10_000
# Mongo keeps milliseconds: "before the latest" starts 1 ms after it.
ONE_MS = timedelta(milliseconds=1)

Answer = Callable[[dict[str, Any], QuoteStore, Settings], Awaitable[dict[str, Any]]]


async def answer_query(
    subject: str, query: Any, store: QuoteStore, settings: Settings
) -> dict[str, Any]:
    """The reply to `query` received on `subject`.

    Raises:
        ValueError: an unknown subject or a malformed query.
        pymongo.errors.PyMongoError: the database failed.
    """
    answer = ANSWERS.get(subject)
    if answer is None:
        raise ValueError(f"no query is answered on {subject!r}")
    if not isinstance(query, dict):
        raise ValueError("query must be a JSON object")

    return await answer(query, store, settings)


async def latest(
    query: dict[str, Any], store: QuoteStore, settings: Settings
) -> dict[str, Any]:
    """`{"coin", "prices"}` -> the latest quote with its newest prices, up to
    `prices` of them and at most `mongo.recent_prices`, oldest first."""
    coin = _coin(query)
    prices = query.get("prices", 0)
    if not isinstance(prices, int) or isinstance(prices, bool) or prices < 0:
        raise ValueError("'prices' must be a non-negative integer")

    vs_currency = settings.coins.vs_currency
    document = await store.latest(coin, vs_currency)
    if document is None:
        return {"found": False}

    recent: list[float] = []
    count = min(prices, settings.mongo.recent_prices)
    if count:
        recent = await store.recent_prices(
            _page(coin, document, count, settings, before=None)
        )
    quote = _quote_json(document, vs_currency) | {"recentPrices": recent}

    return {"found": True, "quote": quote}


async def history(
    query: dict[str, Any], store: QuoteStore, settings: Settings
) -> dict[str, Any]:
    """`{"coin", "limit", "before"}` -> up to `limit` quotes, newest first,
    and `more`: whether an older quote exists.

    The page starts at `before` or just after the coin's latest quote,
    whichever is earlier. One quote more than `limit` is read to tell
    whether this page is the last.
    """
    coin, limit = _coin(query), query.get("limit")
    if not isinstance(limit, int) or not 1 <= limit <= MAX_HISTORY_LIMIT:
        raise ValueError(f"'limit' must be an integer from 1 to {MAX_HISTORY_LIMIT}")
    before = query.get("before")
    if before is not None and not isinstance(before, str):
        raise ValueError("'before' must be an ISO 8601 time")
    document = await store.latest(coin, settings.coins.vs_currency)
    if document is None:
        return {"quotes": [], "more": False}

    start = None if before is None else from_iso(before)
    page = await store.history(_page(coin, document, limit + 1, settings, start))
    log.debug("history_read", coin=coin, quotes=len(page.quotes), windows=page.windows)
    quotes = page.quotes[:limit]

    return {
        "quotes": [_history_json(document) for document in quotes],
        "more": len(page.quotes) > limit,
    }


async def coins(
    query: dict[str, Any], store: QuoteStore, settings: Settings
) -> dict[str, Any]:
    """`{"coins": [...]}` -> `{"observedAt": {coin: time}}` for coins with quotes."""
    wanted = query.get("coins")
    if not isinstance(wanted, list) or not all(isinstance(c, str) for c in wanted):
        raise ValueError("'coins' must be a list of strings")
    if len(wanted) > MAX_COINS_PER_QUERY:
        raise ValueError(f"at most {MAX_COINS_PER_QUERY} coins per query")

    times = await store.latest_times(wanted, settings.coins.vs_currency)

    return {"observedAt": {coin: to_iso(moment) for coin, moment in times.items()}}


async def ping(
    query: dict[str, Any], store: QuoteStore, settings: Settings
) -> dict[str, Any]:
    """`{}` -> `{"ok": true}` once the database answered a ping."""
    await store.ping()

    return {"ok": True}


ANSWERS: dict[str, Answer] = {
    subjects.QUERY_LATEST: latest,
    subjects.QUERY_HISTORY: history,
    subjects.QUERY_COINS: coins,
    subjects.QUERY_PING: ping,
}


def _coin(query: dict[str, Any]) -> str:
    coin = query.get("coin")
    if not isinstance(coin, str) or not COIN_RE.fullmatch(coin):
        raise ValueError("query must have a 'coin' id (lowercase letters, digits, -)")

    return coin


def _page(
    coin: str,
    latest: dict[str, Any],
    limit: int,
    settings: Settings,
    before: datetime | None,
) -> HistoryQuery:
    """`limit` quotes of `coin` before `before`, or from its latest quote on.

    The first window spans `limit` times the gap between the coin's two
    newest quotes, or the schedule's tick interval if that is shorter (the
    gap before a tick after an outage is long): a window too long would
    match, and sort, more quotes than wanted, while one too short only
    makes the reads widen it (an import of daily prices).
    """
    # Nothing is newer than the latest quote: start there, not at `before`.
    newest = latest["observed_at"] + ONE_MS
    interval_s = tick_interval_s(settings.schedule.cron, datetime.now(UTC))
    if latest.get("gap_s"):
        interval_s = min(interval_s, latest["gap_s"])

    return HistoryQuery(
        coin=coin,
        vs_currency=settings.coins.vs_currency,
        before=newest if before is None else min(newest, before),
        limit=limit,
        span_s=interval_s * (limit + 1),
    )


def _quote_json(document: dict[str, Any], vs_currency: str) -> dict[str, Any]:
    return {
        "coin": document["coin"],
        "vsCurrency": vs_currency,
        "price": document["price"],
        "marketCap": document["market_cap"],
        "24hChange": document["change_24h"],
        "observedAt": to_iso(document["observed_at"]),
        "fetchedAt": to_iso(document["fetched_at"]),
    }


def _history_json(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "price": document["price"],
        "marketCap": document["market_cap"],
        "24hChange": document["change_24h"],
        "observedAt": to_iso(document["observed_at"]),
    }
