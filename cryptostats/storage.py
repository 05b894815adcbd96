"""MongoDB storage of quotes: the history, and each coin's latest quote.

`quotes` holds one document per (coin, vs currency, observed time), made
unique by an index, so a redelivered quote is never stored twice. `latest`
holds one document per vs currency whose `coins` field maps each coin to its
newest quote; only a newer quote replaces a coin's entry, whatever order
quotes arrive in. A batch of quotes moves every coin's latest with one
write: SecantusDB commits each statement on its own, so one update per coin
cost 1.1-1.4 s for a tick of 1,000 coins, where replacing the one document
costs about 20 ms. The document carries a version, and a write is a
compare-and-set on it, so Store replicas never undo each other's quotes.

Recent prices, for `/deviation`, are the newest quotes of the history.
History is read newest first in time windows that each match about as many
quotes as are still wanted: SecantusDB sorts every document a filter
matches in memory before applying a limit, so an unbounded "newest N"
would cost as much as the whole history of the coin.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple

import anyio
import structlog
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from cryptostats.errors import LatestContendedError
from cryptostats.messages import EARLIEST_OBSERVED, Quote

log = structlog.get_logger("cryptostats.storage")

DUPLICATE_KEY = 11000
# No quote is older (messages.EARLIEST_OBSERVED): history reads stop here.
HISTORY_START = EARLIEST_OBSERVED
# A window grows at most this much from one read to the next.
MAX_WINDOW_GROWTH = 8.0
MIN_WINDOW_S = 1.0
LATEST_ATTEMPTS = 5
# The longest pause before a second attempt, grown by each further one.
LATEST_BACKOFF_S = 0.01
# The fields of a coin's entry in the `latest` document.
LATEST_FIELDS = ("price", "market_cap", "change_24h", "observed_at", "fetched_at")


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
    # Each coin's latest quote, when it is one of the batch: the quotes that
    # moved a latest, and any that already was it (a redelivery after a
    # write whose notice may not have gone out).
    newest: dict[str, Quote]
    # The coins whose latest did not move although the batch held quotes
    # older than it: their recent prices may have changed.
    revised: set[str]


class Candidate(NamedTuple):
    """The newest quote of a coin in a batch, and the observed time of the
    batch's next newest quote of that coin (None when it has no other)."""

    quote: Quote
    earlier: datetime | None


class QuoteStore:
    """Reads and writes quotes in one database."""

    def __init__(self, database: AsyncDatabase[dict[str, Any]]) -> None:
        self._database = database
        self._quotes = database["quotes"]
        self._latest = database["latest"]

    @property
    def database_name(self) -> str:
        """The name of the database this store writes to."""
        return self._quotes.database.name

    async def prepare(self) -> None:
        """Create the unique history index (a no-op when it exists), and move
        `latest` documents of the earlier layout, one per coin, into their
        currency's document."""
        await self._quotes.create_index(
            [
                ("coin", ASCENDING),
                ("vs_currency", ASCENDING),
                ("observed_at", ASCENDING),
            ],
            unique=True,
            name="coin_vs_observed_unique",
        )
        await self._fold_per_coin_latest()

    async def _fold_per_coin_latest(self) -> None:
        earlier = {"coins": {"$exists": False}}
        newest_of: dict[str, dict[str, Candidate]] = {}
        async for document in self._latest.find(earlier):
            quote = Quote(
                coin=document["_id"],
                vs_currency=document["vs_currency"],
                **{name: document[name] for name in LATEST_FIELDS},
            )
            recent = document.get("recent", [])
            before = recent[-2]["observed_at"] if len(recent) > 1 else None
            of_currency = newest_of.setdefault(quote.vs_currency, {})
            of_currency[quote.coin] = Candidate(quote, before)
        if not newest_of:
            return

        for vs_currency, candidates in newest_of.items():
            # A coin whose id is this currency's code held the new document's
            # _id; its quote is in `candidates` now.
            await self._latest.delete_one({"_id": vs_currency, **earlier})
            await self._advance_latest(vs_currency, candidates)
        await self._latest.delete_many(earlier)
        log.info("latest_layout_upgraded", coins=sum(map(len, newest_of.values())))

    async def save(self, quote: Quote) -> tuple[bool, bool]:
        """Store one quote; see `save_many`.

        Returns:
            (added to history, is the coin's latest).

        Raises:
            pymongo.errors.PyMongoError: the database failed.
            LatestContendedError: see `save_many`.
        """
        saved = await self.save_many([quote])

        return saved.added == 1, quote.coin in saved.newest

    async def save_many(self, quotes: Sequence[Quote]) -> Saved:
        """Store quotes in the history and move each coin's latest on.

        Safe to repeat: a quote already stored adds nothing. The history is
        written with one unordered bulk insert, then each vs currency's
        `latest` document with one compare-and-set, both before returning.

        Returns:
            What changed: see `Saved`.

        Raises:
            pymongo.errors.PyMongoError: the database failed; nothing is lost
                by calling again.
            LatestContendedError: other writers kept changing the latest
                document; nothing is lost by calling again.
        """
        added = await self._insert_history(quotes)
        newest_of: dict[str, dict[str, Candidate]] = {}
        for quote in quotes:
            of_currency = newest_of.setdefault(quote.vs_currency, {})
            of_currency[quote.coin] = _candidate(of_currency.get(quote.coin), quote)

        moved: dict[str, Quote] = {}
        already: dict[str, Quote] = {}
        for vs_currency, candidates in newest_of.items():
            newer, same = await self._advance_latest(vs_currency, candidates)
            moved |= newer
            already |= same
        revised = {
            quote.coin
            for quote in quotes
            if quote.coin not in moved and quote != already.get(quote.coin)
        }

        return Saved(added, moved | already, revised)

    async def _advance_latest(
        self, vs_currency: str, candidates: dict[str, Candidate]
    ) -> tuple[dict[str, Quote], dict[str, Quote]]:
        # Read the document, put in the candidates newer than their coin's
        # entry, and write it back only if no one wrote it in between.
        # Returns those candidates, and the ones that were the entry already.
        for attempt in range(LATEST_ATTEMPTS):
            if attempt:
                # Writers that missed together would otherwise read and
                # write in step again.
                await anyio.sleep(random.uniform(0, LATEST_BACKOFF_S * attempt))
            document = await self._latest.find_one({"_id": vs_currency})
            entries = document["coins"] if document else {}
            newer: dict[str, dict[str, Any]] = {}
            already: dict[str, Quote] = {}
            for coin, (quote, earlier) in candidates.items():
                entry = entries.get(coin)
                if entry is None or quote.observed_at > entry["observed_at"]:
                    times = (earlier, entry and entry["observed_at"])
                    before = max((t for t in times if t is not None), default=None)
                    newer[coin] = _latest_entry(quote, before)
                elif quote.observed_at == entry["observed_at"]:
                    already[coin] = quote
            if not newer or await self._write_latest(vs_currency, document, newer):
                moved = {coin: candidates[coin].quote for coin in newer}
                return moved, already

        raise LatestContendedError(vs_currency, LATEST_ATTEMPTS)

    async def _write_latest(
        self,
        vs_currency: str,
        document: dict[str, Any] | None,
        entries: dict[str, dict[str, Any]],
    ) -> bool:
        """Write `entries` into the latest document as read; False if it moved."""
        if document is None:
            try:
                await self._latest.insert_one(
                    {"_id": vs_currency, "version": 1, "coins": entries}
                )
            except DuplicateKeyError:
                return False
            return True

        version = document["version"]
        result = await self._latest.replace_one(
            {"_id": vs_currency, "version": version},
            {"version": version + 1, "coins": document["coins"] | entries},
        )
        return result.matched_count == 1

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

    async def latest(self, coin: str, vs_currency: str) -> dict[str, Any] | None:
        """The latest quote of `coin` (its `LATEST_FIELDS`), None before its first.

        `coin` must be a valid coin id: it is a field name in the document.
        """
        document = await self._latest.find_one(
            {"_id": vs_currency}, {f"coins.{coin}": True}
        )
        entry = document.get("coins", {}).get(coin) if document else None

        return None if entry is None else {"coin": coin, **entry}

    async def latest_times(
        self, coins: list[str], vs_currency: str
    ) -> dict[str, datetime]:
        """The observed time of each coin's latest quote; absent when none."""
        document = await self._latest.find_one({"_id": vs_currency})
        entries = document["coins"] if document else {}

        return {coin: entries[coin]["observed_at"] for coin in coins if coin in entries}

    async def recent_prices(self, query: HistoryQuery) -> list[float]:
        """The prices of `query`'s history page, oldest first.

        Raises:
            pymongo.errors.PyMongoError: the database failed.
        """
        page = await self.history(query)

        return [document["price"] for document in reversed(page.quotes)]

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


def _candidate(known: Candidate | None, quote: Quote) -> Candidate:
    """`known` with `quote` of the same coin taken into account."""
    if known is None:
        return Candidate(quote, None)
    newest, earlier = known
    if quote.observed_at > newest.observed_at:
        return Candidate(quote, newest.observed_at)
    if quote.observed_at < newest.observed_at and (
        earlier is None or quote.observed_at > earlier
    ):
        return Candidate(newest, quote.observed_at)
    return known


def _latest_entry(quote: Quote, before: datetime | None) -> dict[str, Any]:
    """A coin's entry in the latest document: the quote, and how long after
    the quote before it (`before`) it was observed (`gap_s`, None for a first
    quote), which tells history reads how dense the newest history is."""
    entry: dict[str, Any] = {name: getattr(quote, name) for name in LATEST_FIELDS}
    entry["gap_s"] = (quote.observed_at - before).total_seconds() if before else None
    return entry
