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

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, InsertOne, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from cryptostats.errors import LatestContendedError
from cryptostats.messages import EARLIEST_OBSERVED, Quote

DUPLICATE_KEY = 11000
# No quote is older (messages.EARLIEST_OBSERVED): history reads stop here.
HISTORY_START = EARLIEST_OBSERVED
# A window grows at most this much from one read to the next.
MAX_WINDOW_GROWTH = 8.0
MIN_WINDOW_S = 1.0
LATEST_ATTEMPTS = 5
IN_QUERY_LIMIT = 32


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


class Saved(NamedTuple):
    """What one `QuoteStore.save_many` changed."""

    # Quotes added to the history.
    added: int
    # The new latest quote of each coin whose latest advanced.
    newest: dict[str, Quote]
    # Coins whose recent prices took quotes older than their latest.
    revised: set[str]


class QuoteStore:
    """Reads and writes quotes in one database."""

    def __init__(
        self, database: AsyncDatabase[dict[str, Any]], recent_prices: int
    ) -> None:
        self._database = database
        self._quotes = database["quotes"]
        self._latest = database["latest"]
        self._recent_prices = recent_prices
        # The observed time of each coin's latest as this Store last saw it.
        self._known: dict[str, datetime] = {}

    @property
    def database_name(self) -> str:
        """The name of the database this store writes to."""
        return self._quotes.database.name

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
        """Store one quote; see `save_many`.

        Returns:
            (added to history, became the coin's latest).

        Raises:
            pymongo.errors.PyMongoError: the database failed.
            LatestContendedError: see `save_many`.
        """
        saved = await self.save_many([quote])

        return saved.added == 1, quote.coin in saved.newest

    async def save_many(self, quotes: Sequence[Quote]) -> Saved:
        """Store quotes in the history and advance each coin's latest.

        Safe to repeat: a quote already stored changes nothing. The history
        is written with one unordered bulk insert; each coin's latest takes
        the batch's quotes newer than it in one update.

        Returns:
            What changed: see `Saved`.

        Raises:
            pymongo.errors.PyMongoError: the database failed; nothing is lost
                by calling again.
            LatestContendedError: other writers kept moving a latest; nothing
                is lost by calling again.
        """
        added = await self._insert_history(quotes)
        by_coin: dict[str, list[Quote]] = {}
        for quote in quotes:
            by_coin.setdefault(quote.coin, []).append(quote)

        newest, contended, appended = await self._advance_latest_together(by_coin)
        for coin in contended:
            latest, pushed = await self._advance_latest(coin, by_coin[coin])
            if latest is not None:
                newest[coin] = latest
            if pushed:
                appended[coin] = pushed
        revised = await self._remember_prices(_not_appended(by_coin, appended))

        return Saved(added, newest, revised)

    async def _advance_latest_together(
        self, by_coin: dict[str, list[Quote]]
    ) -> tuple[dict[str, Quote], set[str], dict[str, list[Quote]]]:
        # One bulk write for every coin of the batch, each a compare-and-set
        # on the observed time this Store last wrote or read, appending the
        # quotes newer than it to the recent list; a coin whose latest
        # another writer moved is left to the one-coin path.
        since = await self._since(list(by_coin))
        plans = {
            coin: newer
            for coin, quotes in by_coin.items()
            if (newer := _newer_than(quotes, since.get(coin)))
        }
        if not plans:
            return {}, set(), {}

        operations = [
            self._latest_operation(coin, newer, since.get(coin))
            for coin, newer in plans.items()
        ]
        try:
            result = await self._latest.bulk_write(operations, ordered=False)
            complete = result.inserted_count + result.matched_count == len(plans)
        except BulkWriteError as exc:
            if not _only_duplicates(exc):
                raise
            complete = False

        written = {coin: newer[-1] for coin, newer in plans.items()}
        # Only a write known whole appended its quotes; after any doubt the
        # slower path checks each quote against the list.
        appended = plans if complete else {}
        if not complete:
            after = await self._observed_at_of(list(plans))
            written = {
                coin: last
                for coin, last in written.items()
                if after.get(coin) == last.observed_at
            }
        for coin in plans:
            self._known.pop(coin, None)
        self._known |= {coin: last.observed_at for coin, last in written.items()}

        return written, set(plans) - set(written), appended

    async def _since(self, coins: list[str]) -> dict[str, datetime]:
        unknown = [coin for coin in coins if coin not in self._known]
        if unknown:
            self._known |= await self._observed_at_of(unknown)

        return {coin: self._known[coin] for coin in coins if coin in self._known}

    async def _observed_at_of(self, coins: list[str]) -> dict[str, datetime]:
        # SecantusDB answers a long $in far slower than a scan of this small
        # collection (0.87 s against 0.05 s for 1,000 coins).
        wanted = set(coins)
        query = {"_id": {"$in": coins}} if len(coins) <= IN_QUERY_LIMIT else {}
        cursor = self._latest.find(query, {"observed_at": 1})
        return {
            document["_id"]: document["observed_at"]
            async for document in cursor
            if document["_id"] in wanted
        }

    async def _insert_history(self, quotes: Sequence[Quote]) -> int:
        if not quotes:
            return 0

        try:
            result = await self._quotes.insert_many(
                [_history_document(quote) for quote in quotes], ordered=False
            )
        except BulkWriteError as exc:
            if not _only_duplicates(exc):
                raise
            return int(exc.details.get("nInserted", 0))

        return len(result.inserted_ids)

    async def _advance_latest(
        self, coin: str, quotes: list[Quote]
    ) -> tuple[Quote | None, list[Quote]]:
        # Compare-and-set on the observed time read first: if another writer
        # moved the latest in between, the write misses and we read again.
        # Returns the coin's latest if it is one of `quotes`, and the quotes
        # this call appended to the recent list (so that they are not
        # checked against it one by one afterwards).
        for _ in range(LATEST_ATTEMPTS):
            current = await self._latest.find_one({"_id": coin}, {"observed_at": 1})
            since = current["observed_at"] if current else None
            newer = _newer_than(quotes, since)
            if not newer:
                # Already ours (an earlier attempt wrote it before failing):
                # report it again, so the stored notice is not lost.
                return next((q for q in quotes if q.observed_at == since), None), []
            if await self._write_latest(coin, newer, since):
                self._known[coin] = newer[-1].observed_at
                return newer[-1], newer

        raise LatestContendedError(coin, LATEST_ATTEMPTS)

    async def _write_latest(
        self, coin: str, newer: list[Quote], since: datetime | None
    ) -> bool:
        operation = self._latest_operation(coin, newer, since)
        try:
            result = await self._latest.bulk_write([operation])
        except BulkWriteError as exc:
            if _only_duplicates(exc):
                return False
            raise

        return result.inserted_count + result.matched_count == 1

    def _latest_operation(
        self, coin: str, newer: list[Quote], since: datetime | None
    ) -> InsertOne[dict[str, Any]] | UpdateOne:
        """Insert the first latest of a coin, or move it on from `since`."""
        last = newer[-1]
        fields = {
            "vs_currency": last.vs_currency,
            "price": last.price,
            "market_cap": last.market_cap,
            "change_24h": last.change_24h,
            "observed_at": last.observed_at,
            "fetched_at": last.fetched_at,
        }
        # `newer` is sorted and all after `since`, the newest recent entry:
        # appending keeps the list in observed order.
        recent = [{"observed_at": q.observed_at, "price": q.price} for q in newer]
        if since is None:
            return InsertOne(
                {"_id": coin, **fields, "recent": recent[-self._recent_prices :]}
            )

        return UpdateOne(
            {"_id": coin, "observed_at": since},
            {
                "$set": fields,
                "$push": {"recent": {"$each": recent, "$slice": -self._recent_prices}},
            },
        )

    async def _remember_prices(self, by_coin: dict[str, list[Quote]]) -> set[str]:
        # Quotes no latest update appended: ones older than the latest
        # (redelivered, imported, or from another Store replica). They take
        # their place in the sorted list: one update per coin when none of
        # them is there yet, otherwise each alone unless already there.
        # Returns the coins whose list changed (or may have).
        operations = [
            self._recent_operation(coin, _newer_than(quotes, None))
            for coin, quotes in by_coin.items()
        ]
        if not operations:
            return set()

        result = await self._latest.bulk_write(operations, ordered=False)
        revised = set(by_coin) if result.modified_count else set()
        if result.matched_count == len(operations):
            return revised

        for quotes in by_coin.values():
            for quote in quotes:
                one = await self._latest.bulk_write(
                    [self._recent_operation(quote.coin, [quote])]
                )
                if one.modified_count:
                    revised.add(quote.coin)
        return revised

    def _recent_operation(self, coin: str, quotes: list[Quote]) -> UpdateOne:
        entries = [{"observed_at": q.observed_at, "price": q.price} for q in quotes]
        return UpdateOne(
            {
                "_id": coin,
                "recent.observed_at": {"$nin": [q.observed_at for q in quotes]},
            },
            {
                "$push": {
                    "recent": {
                        "$each": entries,
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


def _only_duplicates(exc: BulkWriteError) -> bool:
    errors = exc.details.get("writeErrors", [])
    concern = exc.details.get("writeConcernErrors", [])
    return not concern and all(error.get("code") == DUPLICATE_KEY for error in errors)


def _history_document(quote: Quote) -> dict[str, Any]:
    return {
        "coin": quote.coin,
        "vs_currency": quote.vs_currency,
        "price": quote.price,
        "market_cap": quote.market_cap,
        "change_24h": quote.change_24h,
        "observed_at": quote.observed_at,
        "fetched_at": quote.fetched_at,
    }


def _not_appended(
    by_coin: dict[str, list[Quote]], appended: dict[str, list[Quote]]
) -> dict[str, list[Quote]]:
    """The quotes of each coin that no latest update appended already."""
    left = {}
    for coin, quotes in by_coin.items():
        done = {quote.observed_at for quote in appended.get(coin, [])}
        rest = [quote for quote in quotes if quote.observed_at not in done]
        if rest:
            left[coin] = rest

    return left


def _newer_than(quotes: list[Quote], since: datetime | None) -> list[Quote]:
    """The quotes observed after `since`, oldest first, one per observed time."""
    by_time = {
        quote.observed_at: quote
        for quote in reversed(quotes)
        if since is None or quote.observed_at > since
    }

    return [by_time[moment] for moment in sorted(by_time)]
