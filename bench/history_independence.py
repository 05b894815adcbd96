"""Start-to-ready time, and /stats and /deviation latency with 100 and with
100,000 stored quotes per coin (the figures of the service's README).

Run: `.venv/bin/python bench/history_independence.py` (after `make install`).
Everything runs on loopback: embedded servers, a local CoinGecko stand-in.

The history is written straight into the `quotes` collection with
insert_many: neither endpoint reads it, and the point of the measure is that
its size does not matter. The `latest` document comes from real ticks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
from pymongo import AsyncMongoClient

from cryptostats.embedded import free_port
from cryptostats.fakegecko import FakeCoinGecko

COINS = ("bitcoin", "ethereum")


def embedded_env(base_url: str) -> dict[str, str]:
    """Environment for a service on its own embedded servers and a fake."""
    return {"COINGECKO_BASE_URL": base_url, "NATS_URL": "", "MONGO_URI": ""}


class Service:
    """`python -m cryptostats` on embedded servers in a fresh data dir."""

    def __init__(self, data_dir: Path, base_url: str) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        config = data_dir / "bench.toml"
        data_dir.mkdir(parents=True, exist_ok=True)
        config.write_text(
            f"[coins]\nids = {json.dumps(list(COINS))}\n"
            "[coingecko]\ncalls_per_minute = 6000\n"
        )
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "cryptostats", "--config", str(config),
                "--data-dir", str(data_dir), "--port", str(self.port),
                "--schedule", "0 0 1 1 *",
            ],
            env={**os.environ, **embedded_env(base_url)},
            stdout=(data_dir / "service.log").open("wb"),
            stderr=subprocess.STDOUT,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def wait_answering(self, session: aiohttp.ClientSession) -> float:
        """Seconds from spawn until /stats answers 200 for every coin."""
        while True:
            try:
                statuses = [
                    await _status(session, f"{self.url}/stats?coin={c}") for c in COINS
                ]
                if statuses == [200] * len(COINS):
                    return time.monotonic() - self.started
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.02)

    def ready_ms(self) -> int:
        for line in (self.data_dir / "service.log").read_text().splitlines():
            if '"service_ready"' in line:
                return int(json.loads(line)["elapsed_ms"])
        raise RuntimeError("service never logged service_ready")

    def mongo_port(self) -> int:
        for line in (self.data_dir / "service.log").read_text().splitlines():
            if '"secantusdb"' in line and "embedded_server_ready" in line:
                return int(json.loads(line)["port"])
        raise RuntimeError("no embedded SecantusDB in the log")

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(30)


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as response:
        return response.status


async def seed_history(mongo_port: int, per_coin: int) -> float:
    """Insert `per_coin` older quotes per coin; seconds taken."""
    client: AsyncMongoClient = AsyncMongoClient(
        f"mongodb://127.0.0.1:{mongo_port}/?directConnection=true"
    )
    quotes = client["cryptostats"]["quotes"]
    start = datetime(2020, 1, 1, tzinfo=UTC)
    began = time.monotonic()
    for coin in COINS:
        for first in range(0, per_coin, 5000):
            documents = [
                {
                    "coin": coin, "vs_currency": "usd", "price": 100.0 + i,
                    "market_cap": None, "change_24h": None,
                    "observed_at": start + timedelta(minutes=15 * i),
                    "fetched_at": start + timedelta(minutes=15 * i),
                }
                for i in range(first, min(first + 5000, per_coin))
            ]  # fmt: skip
            await quotes.insert_many(documents, ordered=False)
    count = await quotes.count_documents({})
    await client.close()
    print(f"  seeded {count} quotes in {time.monotonic() - began:.1f}s")
    return time.monotonic() - began


async def latencies_ms(
    session: aiohttp.ClientSession, url: str, count: int
) -> list[float]:
    """Sequential round trips of GET `url`, in milliseconds; non-200s printed."""
    samples = []
    for _ in range(count):
        began = time.perf_counter()
        async with session.get(url) as response:
            body = await response.read()
        samples.append((time.perf_counter() - began) * 1000)
        if response.status != 200:
            print(f"  ! {response.status} after {samples[-1]:.0f} ms: {body[:200]!r}")
    return samples


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[int(len(ordered) * 0.99) - 1]
    return f"p50 {statistics.median(ordered):6.2f} ms  p99 {p99:6.2f} ms"


async def measure(history: int, requests: int, root: Path) -> dict[str, list[float]]:
    fake = FakeCoinGecko.from_prices(
        {coin: [40000.0, 41000.0, 42000.0] for coin in COINS}
    )
    async with fake, aiohttp.ClientSession() as session:
        service = Service(root / f"h{history}", fake.base_url)
        try:
            answering_s = await service.wait_answering(session)
            print(f"history {history}: ready {service.ready_ms()} ms, "
                  f"first answer {answering_s * 1000:.0f} ms")  # fmt: skip
            if history:
                await seed_history(service.mongo_port(), history)
            results = {}
            for path in ("/stats?coin=bitcoin", "/deviation?coin=bitcoin"):
                results[path] = await latencies_ms(
                    session, service.url + path, requests
                )
                print(f"  {path:<26} {summary(results[path])}")
            results["ready_ms"] = [float(service.ready_ms())]
            return results
        finally:
            service.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        runs = []
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}")
            for history in (100, args.history):
                runs.append(
                    (
                        history,
                        await measure(history, args.requests, Path(tmp) / str(round_)),
                    )
                )
    print_table(runs, args.history)


def print_table(runs: list[tuple[int, dict[str, list[float]]]], big: int) -> None:
    columns = ["quotes per coin", "start to ready (median)"] + [
        f"{path} {stat}" for path in ("/stats", "/deviation") for stat in ("p50", "p99")
    ]
    print("\n| " + " | ".join(columns) + " |")
    print("|---|---|---|---|---|---|")
    for history in (100, big):
        merged: dict[str, list[float]] = {}
        for size, result in runs:
            if size == history:
                for key, values in result.items():
                    merged.setdefault(key, []).extend(values)
        cells = [f"{statistics.median(merged['ready_ms']):.0f} ms"]
        for path in ("/stats?coin=bitcoin", "/deviation?coin=bitcoin"):
            ordered = sorted(merged[path])
            cells += [
                f"{statistics.median(ordered):.2f} ms",
                f"{ordered[int(len(ordered) * 0.99) - 1]:.2f} ms",
            ]
        print(f"| {history:,} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    asyncio.run(main())
