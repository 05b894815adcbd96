"""MongoDB storage of quotes: the history and one `latest` document per coin.

`quotes` holds one document per (coin, vs currency, observed time), made
unique by an index, so a redelivered quote is never stored twice. `latest`
holds, per coin, the newest quote and a bounded list of its recent prices;
it changes only for a newer quote, and answers every read of the API with a
single point read whose cost does not grow with history.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from cryptostats.messages import Quote

DUPLICATE_KEY = 11000


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
                    },
                    "$push": {
                        "prices": {
                            "$each": [quote.price],
                            "$slice": -self._recent_prices,
                        }
                    },
                },
                upsert=True,
            )
        except DuplicateKeyError:
            return False

        return True

    async def latest(self, coin: str) -> dict[str, Any] | None:
        """The `latest` document of `coin`, or None before its first quote."""
        return await self._latest.find_one({"_id": coin})
