"""What one tick's writes cost on SecantusDB, storage layout against layout.

Against one embedded SecantusDB (durable commits, as the service runs it),
times the writes of a tick of `--coins` coins, `--repeats` times each: the
history insert, the same in all three, and moving each coin's latest on:

- `per_coin`: one UpdateOne per coin in one unordered bulk write, on
  documents holding only the quote (the earlier layout, new install);
- `per_coin_full`: the same on documents that also hold `--recent` recent
  prices, as the earlier layout's documents did after that many ticks;
- `one_document`: `QuoteStore.save_many`, as the Store runs it now: one
  compare-and-set replace of a document holding every coin's latest.

Run: `.venv/bin/python bench/latest_writes.py [--coins 1000] [--recent 1000]`.
Prints the median seconds of each and its ratio to `one_document`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pymongo import UpdateOne

from cryptostats import embedded
from cryptostats.messages import Quote
from cryptostats.storage import QuoteStore, connect

T0 = datetime(2024, 1, 1, tzinfo=UTC)
TICK = timedelta(minutes=15)


def entry(step: int) -> dict[str, Any]:
    moment = T0 + step * TICK
    return {
        "price": 100.0 + step,
        "market_cap": 1e9,
        "change_24h": 0.5,
        "observed_at": moment,
        "fetched_at": moment,
    }


async def per_coin(database: Any, coins: list[str], recent: int, steps: int) -> list:
    collection = database[f"per_coin_{recent}"]
    history = database[f"history_{recent}"]
    prices = [{"observed_at": T0 - n * TICK, "price": 1.0 + n} for n in range(recent)]
    await collection.insert_many(
        [{"_id": coin, **entry(0), "recent": prices} for coin in coins]
    )

    async def tick(step: int) -> None:
        new = entry(step)
        await history.insert_many([{"coin": coin, **new} for coin in coins])
        await collection.bulk_write(
            [
                UpdateOne(
                    {"_id": coin, "observed_at": entry(step - 1)["observed_at"]},
                    {
                        "$set": new,
                        "$push": {
                            "recent": {
                                "$each": [
                                    {
                                        "observed_at": new["observed_at"],
                                        "price": new["price"],
                                    }
                                ],
                                "$slice": -max(recent, 1),
                            }
                        },
                    },
                )
                for coin in coins
            ],
            ordered=False,
        )

    return await timed(tick, steps)


async def one_document(database: Any, coins: list[str], steps: int) -> list:
    store = QuoteStore(database)
    await store.prepare()

    async def tick(step: int) -> None:
        moment = T0 + step * TICK
        quotes = [
            Quote(coin, "usd", 100.0 + step, 1e9, 0.5, moment, moment) for coin in coins
        ]
        saved = await store.save_many(quotes)
        assert len(saved.newest) == len(coins)

    await tick(0)
    return await timed(tick, steps)


async def timed(tick: Callable[[int], Awaitable[None]], steps: int) -> list:
    seconds = []
    for step in range(1, steps + 1):
        started = time.perf_counter()
        await tick(step)
        seconds.append(time.perf_counter() - started)

    return seconds


async def main(coin_count: int, recent: int, repeats: int) -> None:
    coins = [f"coin-{n:05d}" for n in range(coin_count)]
    with tempfile.TemporaryDirectory() as data_dir:
        server = embedded.embedded_mongo(Path(data_dir))
        await server.start()
        client = connect(embedded.mongo_uri(server), timeout_s=60)
        try:
            database = client["bench_latest"]
            rows = {
                "one_document": await one_document(database, coins, repeats),
                "per_coin": await per_coin(database, coins, 0, repeats),
                "per_coin_full": await per_coin(database, coins, recent, repeats),
            }
        finally:
            await client.close()
            await server.stop()

    base = statistics.median(rows["one_document"])
    print(f"{coin_count} coins, {recent} recent prices in per_coin_full")
    print("| layout | median s | x one_document |")
    print("|---|---:|---:|")
    for name, seconds in rows.items():
        median = statistics.median(seconds)
        print(f"| {name} | {median:.3f} | {median / base:.1f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coins", type=int, default=1000)
    parser.add_argument("--recent", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(main(args.coins, args.recent, args.repeats))
