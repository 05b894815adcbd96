"""One tick of many coins: from the tick to the last stored write."""

from __future__ import annotations

import asyncio
import statistics
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NatsClient

from cryptostats import subjects
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.messages import dumps


async def measure(
    client: NatsClient,
    workdir: Path,
    env: dict[str, str],
    coin_count: int,
    tick_count: int,
    service_type: Any,
) -> dict[str, Any]:
    """Tick a service tracking `coin_count` coins; seconds to the last write.

    A write counts when the Store announces it on the stored subject, which
    it does after the write and the ack.
    """
    coins = [f"coin-{index:04d}" for index in range(coin_count)]
    prices = {coin: [100.0 + step for step in range(tick_count + 2)] for coin in coins}
    async with FakeCoinGecko.from_prices(prices) as fake:
        service = service_type(
            workdir, {**env, "COINGECKO_BASE_URL": fake.base_url}, coins
        )
        try:
            await service.ready()
            seconds = [
                await _one_tick(client, set(coins), number)
                for number in range(tick_count)
            ]
        finally:
            service.stop()
        requests = len(fake.requests)

    return {
        "coins": coin_count,
        "ticks_s": [round(s, 3) for s in seconds],
        "median_s": round(statistics.median(seconds), 3),
        "coingecko_requests": requests,
    }


async def _one_tick(client: NatsClient, coins: set[str], number: int) -> float:
    stored: set[str] = set()
    done = asyncio.Event()
    last = 0.0

    async def on_stored(msg: Any) -> None:
        nonlocal last
        coin = msg.subject.rpartition(".")[2]
        if coin in coins:
            stored.add(coin)
            last = time.monotonic()
            if stored == coins:
                done.set()

    sub = await client.subscribe(f"{subjects.STORED_PREFIX}.*", cb=on_stored)
    await client.flush()
    started = time.monotonic()
    await client.publish(subjects.TICK, dumps({"tickId": f"bench-{number}"}))
    try:
        await asyncio.wait_for(done.wait(), 120)
    finally:
        await sub.unsubscribe()
    await asyncio.sleep(1)
    return last - started
