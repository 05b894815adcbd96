"""Soak: run the whole service for a while on a fast schedule under steady
HTTP load, then report ticks, quotes stored versus expected, HTTP errors and
the service's memory.

    .venv/bin/python bench/soak.py --minutes 10

The service runs as `python -m cryptostats` with its embedded nats-server
and SecantusDB, against a fake CoinGecko whose every answer is a new quote.
Not part of `make test`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from pymongo import AsyncMongoClient

from cryptostats import embedded
from cryptostats.fakegecko import FakeCoinGecko

REPO = Path(__file__).resolve().parent.parent
COINS = ("bitcoin", "ethereum", "solana")
DATABASE = "soak"


@dataclass
class Load:
    """What the HTTP clients saw."""

    statuses: Counter[int] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--schedule", default="*/2 * * * * *")
    parser.add_argument("--rps", type=float, default=20.0, help="HTTP requests/s")
    parser.add_argument("--data-dir", type=Path, help="default: a temporary dir")
    return parser.parse_args()


def write_config(data_dir: Path, base_url: str, port: int, schedule: str) -> Path:
    path = data_dir / "soak.toml"
    path.write_text(
        f'[service]\ndata_dir = "{data_dir}"\n'
        f'[schedule]\ncron = "{schedule}"\n'
        f"[coins]\nids = {json.dumps(list(COINS))}\n"
        f'[coingecko]\nbase_url = "{base_url}"\ncalls_per_minute = 600\n'
        f'[mongo]\ndatabase = "{DATABASE}"\nrecent_prices = 100\n'
        f"[http]\nport = {port}\n"
    )
    return path


def rss_kib(pid: int) -> int:
    """Resident memory of `pid` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


async def wait_healthy(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(f"{url}/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"service not healthy at {url} after {timeout_s}s")


async def http_load(url: str, rps: float, until: float, load: Load) -> None:
    """GET /stats and /deviation in turn, `rps` a second, until `until`."""
    paths = [f"/stats?coin={c}" for c in COINS] + [
        f"/deviation?coin={c}&window=50" for c in COINS
    ]
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        sent = 0
        start = time.monotonic()
        while time.monotonic() < until:
            await _one_request(session, url + paths[sent % len(paths)], load)
            sent += 1
            await asyncio.sleep(max(0.0, start + sent / rps - time.monotonic()))


async def _one_request(session: aiohttp.ClientSession, url: str, load: Load) -> None:
    started = time.monotonic()
    try:
        async with session.get(url) as response:
            await response.read()
            load.statuses[response.status] += 1
    except (aiohttp.ClientError, TimeoutError) as exc:
        load.failures[type(exc).__name__] += 1
        return
    load.latencies_ms.append((time.monotonic() - started) * 1000)


async def sample_rss(pid: int, until: float, samples: list[int]) -> None:
    while time.monotonic() < until:
        samples.append(rss_kib(pid))
        await asyncio.sleep(10)


async def settle(fake: FakeCoinGecko, url: str, timeout_s: float = 60.0) -> None:
    """Stop new quotes (CoinGecko answers 503 from now on), then wait until
    /stats shows the last quote served of every coin."""
    for _ in range(10_000):
        fake.enqueue(503, {"status": {"error_message": "soak over"}})
    await asyncio.sleep(3)
    last = {coin: fake.feeds[coin].points[fake.feeds[coin].position - 1].price
            for coin in COINS}  # fmt: skip
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        for coin, price in last.items():
            while time.monotonic() < deadline:
                async with session.get(f"{url}/stats?coin={coin}") as response:
                    body = await response.json(content_type=None)
                if response.status == 200 and body["price"] == price:
                    break
                await asyncio.sleep(0.5)


async def stored_counts(data_dir: Path) -> dict[str, dict[str, Any]]:
    """Per coin: history size, distinct prices, latest price vs history's newest."""
    server = embedded.embedded_mongo(data_dir)
    await server.start()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        embedded.mongo_uri(server), tz_aware=True
    )
    try:
        result = {}
        for coin in COINS:
            cursor = client[DATABASE].quotes.find({"coin": coin})
            documents = [doc async for doc in cursor]
            documents.sort(key=lambda doc: doc["observed_at"])
            prices = [doc["price"] for doc in documents]
            latest = await client[DATABASE].latest.find_one({"_id": "usd"}) or {}
            entry = latest.get("coins", {}).get(coin, {})
            result[coin] = {
                "stored": len(prices),
                "distinct": len(set(prices)),
                "latest_matches_history": bool(prices)
                and entry.get("price") == prices[-1],
                "prices": prices,
            }
        return result
    finally:
        await client.close()
        await server.stop()


def log_events(path: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            counts[json.loads(line).get("event", "?")] += 1
    return counts


async def soak(args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    ticks_needed = int(args.minutes * 60) + 100
    fake = FakeCoinGecko.from_prices(
        {coin: [1000.0 * (i + 1) + n for n in range(ticks_needed)]
         for i, coin in enumerate(COINS)}
    )  # fmt: skip
    async with fake:
        port = embedded.free_port()
        url = f"http://127.0.0.1:{port}"
        config = write_config(data_dir, fake.base_url, port, args.schedule)
        log_path = data_dir / "service.log"
        with log_path.open("wb") as log_file:
            service = subprocess.Popen(  # noqa: ASYNC220 (quick fork)
                [sys.executable, "-m", "cryptostats", "--config", str(config)],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        try:
            return await _measure(args, fake, service, url, data_dir, log_path)
        finally:
            if service.poll() is None:
                service.kill()


async def _measure(
    args: argparse.Namespace,
    fake: FakeCoinGecko,
    service: subprocess.Popen[bytes],
    url: str,
    data_dir: Path,
    log_path: Path,
) -> dict[str, Any]:
    await wait_healthy(url)
    started = time.monotonic()
    until = started + args.minutes * 60
    load, rss = Load(), [rss_kib(service.pid)]
    await asyncio.gather(
        http_load(url, args.rps, until, load), sample_rss(service.pid, until, rss)
    )
    rss.append(rss_kib(service.pid))
    await settle(fake, url)

    service.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(service.wait, 30)
    stored = await stored_counts(data_dir)
    return _report(args, fake, load, rss, code, stored, log_events(log_path))


def _report(
    args: argparse.Namespace,
    fake: FakeCoinGecko,
    load: Load,
    rss: list[int],
    code: int,
    stored: dict[str, dict[str, Any]],
    events: Counter[str],
) -> dict[str, Any]:
    coins = {}
    for coin in COINS:
        feed = fake.feeds[coin]
        expected = [p.price for p in feed.points[: feed.position]]
        got = stored[coin]
        coins[coin] = {
            "expected": len(expected),
            "stored": got["stored"],
            "lost": len(set(expected) - set(got["prices"])),
            "doubled": got["stored"] - got["distinct"],
            "latest_ok": got["latest_matches_history"],
        }
    latencies = sorted(load.latencies_ms) or [0.0]
    return {
        "minutes": args.minutes,
        "schedule": args.schedule,
        "ticks": events["tick"],
        "fetches_ok": events["quotes_fetched"],
        "coins": coins,
        "http_requests": sum(load.statuses.values()) + sum(load.failures.values()),
        "http_statuses": dict(load.statuses),
        "http_failures": dict(load.failures),
        "http_5xx": sum(n for s, n in load.statuses.items() if s >= 500),
        "http_median_ms": round(latencies[len(latencies) // 2], 1),
        "http_p99_ms": round(latencies[int(len(latencies) * 0.99)], 1),
        "rss_kib_start": rss[0],
        "rss_kib_after_1min": rss[min(6, len(rss) - 1)],
        "rss_kib_end": rss[-1],
        "rss_kib_max": max(rss),
        "exit_code": code,
        "actor_crashes": events["actor_crashed"],
    }


def main() -> None:
    args = parse_args()
    with tempfile.TemporaryDirectory(prefix="cryptostats-soak-") as tmp:
        data_dir = (args.data_dir or Path(tmp)).resolve()
        data_dir.mkdir(parents=True, exist_ok=True)
        report = asyncio.run(soak(args, data_dir))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
