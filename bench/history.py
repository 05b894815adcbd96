"""How the cost of a /history page grows with the length of a coin's history.

Seeds one coin's history at one quote per 15-minute tick in an embedded
SecantusDB, then times, at each size, three reads of 100 quotes:

- `page_newest`: QuoteStore.history from the latest quote (what /history does);
- `page_middle`: the same, from the middle of the history (a later page);
- `unbounded`: `find(coin).sort(observed_at desc).limit(100)`, the baseline
  that the windowed read replaces.

Run: `.venv/bin/python bench/history.py [--sizes 1000,20000] [--repeats 15]`.
Prints a markdown table of medians; ratios compare sizes within the run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import DESCENDING

from cryptostats import embedded
from cryptostats.messages import Quote
from cryptostats.storage import HistoryQuery, QuoteStore, connect

T0 = datetime(2020, 1, 1, tzinfo=UTC)
TICK = timedelta(minutes=15)
LIMIT = 100
BATCH = 5000


def documents(count: int) -> list[dict[str, Any]]:
    return [
        {
            "coin": "bitcoin",
            "vs_currency": "usd",
            "price": 1.0 + i,
            "market_cap": None,
            "change_24h": None,
            "observed_at": T0 + i * TICK,
            "fetched_at": T0 + i * TICK,
        }
        for i in range(count)
    ]


async def seed(store: QuoteStore, database: Any, count: int) -> None:
    docs = documents(count)
    for start in range(0, count, BATCH):
        await database.quotes.insert_many(docs[start : start + BATCH])
    last = docs[-1]
    await store.save(
        Quote(
            "bitcoin",
            "usd",
            last["price"],
            None,
            None,
            last["observed_at"],
            last["fetched_at"],
        )
    )


async def median_ms(read: Any, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        await read()
        times.append((time.perf_counter() - started) * 1000)

    return statistics.median(times)


async def measure(uri: str, size: int, repeats: int) -> dict[str, float]:
    client = connect(uri)
    database = client[f"bench_{size}"]
    store = QuoteStore(database)
    await store.prepare()
    await seed(store, database, size)
    newest = T0 + size * TICK
    span_s = (LIMIT + 1) * TICK.total_seconds()

    async def page(before: datetime) -> None:
        result = await store.history(
            HistoryQuery("bitcoin", "usd", before, LIMIT, span_s)
        )
        assert len(result.quotes) == LIMIT

    async def unbounded() -> None:
        cursor = (
            database.quotes.find({"coin": "bitcoin", "vs_currency": "usd"})
            .sort("observed_at", DESCENDING)
            .limit(LIMIT)
        )
        assert len([doc async for doc in cursor]) == LIMIT

    result = {
        "page_newest": await median_ms(lambda: page(newest), repeats),
        "page_middle": await median_ms(lambda: page(T0 + size // 2 * TICK), repeats),
        "unbounded": await median_ms(unbounded, repeats),
    }
    await client.drop_database(f"bench_{size}")
    await client.close()

    return result


async def main(sizes: list[int], repeats: int) -> None:
    with tempfile.TemporaryDirectory() as data_dir:
        server = embedded.embedded_mongo(Path(data_dir))
        await server.start()
        try:
            rows = {
                size: await measure(embedded.mongo_uri(server), size, repeats)
                for size in sizes
            }
        finally:
            await server.stop()

    print("| quotes stored | page_newest ms | page_middle ms | unbounded ms |")
    print("|---:|---:|---:|---:|")
    for size, row in rows.items():
        print(
            f"| {size:,} | {row['page_newest']:.1f} | {row['page_middle']:.1f} "
            f"| {row['unbounded']:.1f} |"
        )
    smallest, largest = rows[sizes[0]], rows[sizes[-1]]
    for name in ("page_newest", "page_middle", "unbounded"):
        ratio = largest[name] / smallest[name]
        print(f"{name}: x{ratio:.2f} from {sizes[0]:,} to {sizes[-1]:,} quotes")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,20000")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    asyncio.run(main([int(s) for s in args.sizes.split(",")], args.repeats))
