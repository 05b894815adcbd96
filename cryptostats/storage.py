"""MongoDB storage of quotes: the history and one `latest` document per coin.

`quotes` holds one document per (coin, vs currency, observed time), made
unique by an index, so a redelivered quote is never stored twice. `latest`
holds, per coin, the newest quote (changed only by a newer quote) and a
bounded list of its recent prices in observed order, whatever order quotes
arrive in; it answers `/stats` and `/deviation` with a single point read
whose cost does not grow with history.

History is read newest first in time windows that each match about as many
quotes as are still wanted: SecantusDB sorts every document a filter
matches in memory before applying a limit, so an unbounded "newest N"
would cost as much as the whole history of the coin.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from cryptostats.messages import Quote

DUPLICATE_KEY = 11000
# No coin had a price before bitcoin's first block: history reads stop here.
HISTORY_START = datetime(2009, 1, 3, tzinfo=UTC)
# A window grows at most this much from one read to the next.
MAX_WINDOW_GROWTH = 8.0
MIN_WINDOW_S = 1.0


def connect(uri: str, timeout_s: float = 5.0) -> AsyncMongoClient[dict[str, Any]]:
    """A client for `uri` returning timezone-aware UTC datetimes."""
    timeout_ms = int(timeout_s * 1000)
    return AsyncMongoClient(
        uri,
        tz_aware=True,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        appname="cryptostats",
    )


class QuoteStore:
    """Reads and writes quotes in one database."""

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]], recent_prices: int
    ) -> None:
        self._database = database
        self._quotes = database["quotes"]
        self._latest = database["latest"]
        self._recent_prices = recent_prices

    async def ensure_indexes(self) -> None:
        """Create the unique history index (a no-op when it exists)."""
        await self._quotes.create_index(
            [
                ("coin", ASCENDING),
                ("vs_currency", ASCENDING),
                ("observed_at", ASCENDING),
            ],
            unique=True,
            name="coin_vs_observed_unique",
        )

    async def save(self, quote: Quote) -> tuple[bool, bool]:
        """Store `quote` in the history and, if it is newer, as the latest.

        Safe to repeat: a quote already stored changes nothing.

        Returns:
            (added to history, became the coin's latest).

        Raises:
            pymongo.errors.PyMongoError: the database failed; nothing is lost
                by calling again.
        """
        added = await self._insert_history(quote)
        newest = await self._advance_latest(quote)
        await self._remember_price(quote)

        return added, newest

    async def _insert_history(self, quote: Quote) -> bool:
        document = {
            "coin": quote.coin,
            "vs_currency": quote.vs_currency,
            "price": quote.price,
            "market_cap": quote.market_cap,
            "change_24h": quote.change_24h,
            "observed_at": quote.observed_at,
            "fetched_at": quote.fetched_at,
        }
        try:
            await self._quotes.insert_one(document)
        except DuplicateKeyError:
            return False

        return True

    async def _advance_latest(self, quote: Quote) -> bool:
        # Matches only when our quote is newer; otherwise the upsert tries to
        # insert a second document with this _id and fails with 11000.
        try:
            await self._latest.update_one(
                {"_id": quote.coin, "observed_at": {"$lt": quote.observed_at}},
                {
                    "$set": {
                        "vs_currency": quote.vs_currency,
                        "price": quote.price,
                        "market_cap": quote.market_cap,
                        "change_24h": quote.change_24h,
                        "observed_at": quote.observed_at,
                        "fetched_at": quote.fetched_at,
                    }
                },
                upsert=True,
            )
        except DuplicateKeyError:
            return False

        return True

    async def _remember_price(self, quote: Quote) -> None:
        # Kept sorted by observed time, so a quote that arrives after a newer
        # one (redelivered, or from another Store replica) still takes its
        # place; a quote already in the list fails the filter.
        await self._latest.update_one(
            {"_id": quote.coin, "recent.observed_at": {"$ne": quote.observed_at}},
            {
                "$push": {
                    "recent": {
                        "$each": [
                            {"observed_at": quote.observed_at, "price": quote.price}
                        ],
                        "$sort": {"observed_at": ASCENDING},
                        "$slice": -self._recent_prices,
                    }
                }
            },
        )

    async def latest(self, coin: str) -> dict[str, Any] | None:
        """The `latest` document of `coin`, or None before its first quote."""
        return await self._latest.find_one({"_id": coin})

    async def latest_times(self, coins: list[str]) -> dict[str, datetime]:
        """The observed time of each coin's latest quote; absent when none."""
        cursor = self._latest.find(
            {"_id": {"$in": coins}}, projection={"observed_at": True}
        )

        return {doc["_id"]: doc["observed_at"] async for doc in cursor}

    async def ping(self) -> None:
        """Return once the database answers.

        Raises:
            pymongo.errors.PyMongoError: it does not.
        """
        await self._database.command("ping")

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """Quotes of a coin observed before `query.before`, newest first.

        Reads consecutive time windows back from `query.before`, each sized
        from the density the previous ones showed, until `query.limit`
        quotes are found or HISTORY_START is reached.

        Raises:
            pymongo.errors.PyMongoError: the database failed.
        """
        page = HistoryPage()
        upper, span_s = query.before, max(query.span_s, MIN_WINDOW_S)
        while len(page.quotes) < query.limit and upper > HISTORY_START:
            span_s = min(span_s, (upper - HISTORY_START).total_seconds())
            lower = upper - timedelta(seconds=span_s)
            wanted = query.limit - len(page.quotes)
            found = await self._window(query, lower, upper, wanted)
            page.quotes += found
            page.windows += 1
            span_s = next_span_s(span_s, len(found), wanted - len(found))
            upper = lower

        return page

    async def _window(
        self, query: HistoryQuery, lower: datetime, upper: datetime, limit: int
    ) -> list[dict[str, Any]]:
        cursor = (
            self._quotes.find(
                {
                    "coin": query.coin,
                    "vs_currency": query.vs_currency,
                    "observed_at": {"$gte": lower, "$lt": upper},
                },
                projection={"_id": False},
            )
            .sort("observed_at", DESCENDING)
            .limit(limit)
        )

        return [doc async for doc in cursor]


@dataclass(frozen=True)
class HistoryQuery:
    """One page of history: `limit` quotes of a coin observed before `before`.

    `span_s` is the first window's length: about `limit` ticks.
    """

    coin: str
    vs_currency: str
    before: datetime
    limit: int
    span_s: float


@dataclass
class HistoryPage:
    """The quotes found, newest first, and how many windows were read."""

    quotes: list[dict[str, Any]] = field(default_factory=list)
    windows: int = 0


def next_span_s(span_s: float, found: int, still_wanted: int) -> float:
    """The length of the next window, from what the last one held.

    A window that held `found` quotes in `span_s` seconds suggests how long
    the next must be to hold `still_wanted` more; growth is bounded so that
    a sparse stretch never makes one read match the whole history.
    """
    if found == 0:
        return span_s * MAX_WINDOW_GROWTH
    estimate = span_s * still_wanted / found * 1.25

    return max(MIN_WINDOW_S, min(estimate, span_s * MAX_WINDOW_GROWTH))
