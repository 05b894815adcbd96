"""Ingest: the history import path against a bare batched insert_many."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from nats.aio.client import Client as NatsClient
from pymongo import ASCENDING, AsyncMongoClient

from cryptostats.history_import import (
    BATCH_QUOTES,
    publish_history,
    wait_until_stored,
)
from cryptostats.messages import Quote

END = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)
CHUNK = 50_000


def synthetic(
    coin: str, count: int, start: int = 0, stop: int | None = None
) -> list[Quote]:
    """Quotes `start..stop` of `count` ending at END, every 15 minutes."""
    fetched_at = datetime.now(UTC)
    quotes = []
    for index in range(start, count if stop is None else stop):
        price = 100.0 * (1 + 0.1 * math.sin(index / 50))
        observed_at = END - (count - index) * STEP
        quotes.append(
            Quote(coin, "usd", price, price * 1e6, None, observed_at, fetched_at)
        )
    return quotes


def chunks(count: int) -> Iterator[tuple[int, int]]:
    for start in range(0, count, CHUNK):
        yield start, min(count, start + CHUNK)


async def import_rate(client: NatsClient, coin: str, count: int) -> dict[str, Any]:
    """Hand `count` quotes of `coin` to the Publisher; wait for the Store."""
    started = time.monotonic()
    published = duplicates = 0
    for start, stop in chunks(count):
        quotes = synthetic(coin, count, start, stop)
        got = await publish_history(client, quotes, 30.0, progress=False)
        published += got.published
        duplicates += got.duplicates
    await wait_until_stored(client, published - duplicates, 3600.0, progress=False)
    seconds = time.monotonic() - started
    return {
        "coin": coin,
        "quotes": count,
        "published": published,
        "duplicates": duplicates,
        "seconds": round(seconds, 2),
        "rate": round(count / seconds),
    }


async def bare_rate(mongo_uri: str, coin: str, count: int) -> float:
    """insert_many of the same documents, batches of BATCH_QUOTES, unordered."""
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    quotes = client["bench_bare"]["quotes"]
    await quotes.create_index(
        [("coin", ASCENDING), ("vs_currency", ASCENDING), ("observed_at", ASCENDING)],
        unique=True,
    )
    started = time.monotonic()
    for start, stop in chunks(count):
        documents = [
            {
                "coin": q.coin,
                "vs_currency": q.vs_currency,
                "price": q.price,
                "market_cap": q.market_cap,
                "change_24h": q.change_24h,
                "observed_at": q.observed_at,
                "fetched_at": q.fetched_at,
            }
            for q in synthetic(coin, count, start, stop)
        ]
        for first in range(0, len(documents), BATCH_QUOTES):
            await quotes.insert_many(
                documents[first : first + BATCH_QUOTES], ordered=False
            )
    seconds = time.monotonic() - started
    await client.close()
    return count / seconds


async def compare(client: NatsClient, mongo_uri: str, count: int) -> dict[str, Any]:
    """Bare, import, bare again, on the same server; the ratio to the median."""
    bare = [await bare_rate(mongo_uri, "bare-a", count)]
    imported = await import_rate(client, "bench-ingest", count)
    bare.append(await bare_rate(mongo_uri, "bare-b", count))
    bare_median = statistics.median(bare)
    return {
        "quotes": count,
        "bare_rates": [round(rate) for rate in bare],
        "import": imported,
        "ratio": round(imported["rate"] / bare_median, 3),
    }


async def seed(client: NatsClient, coin: str, count: int) -> dict[str, Any]:
    """Store `count` quotes of `coin` through the import path."""
    return await import_rate(client, coin, count)
