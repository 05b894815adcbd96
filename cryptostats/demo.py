"""`make demo`: the service on real history, offline, within a minute.

A local CoinGecko-format server replays the bundled daily history of
bitcoin, ethereum and solana, one day per request; the service fetches it
every few seconds; this script prints what `/stats` and `/deviation` answer.
Each run replays from the start on empty servers: an earlier run's quotes
in the data dir are removed first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import Any

import aiohttp

from cryptostats import embedded
from cryptostats.fakegecko import FakeCoinGecko, bundled_feed

COINS = ("bitcoin", "ethereum", "solana")
CONFIG_FILE = "demo.toml"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m cryptostats.demo", description=__doc__
    )
    parser.add_argument(
        "--port", type=int, default=3000, help="HTTP port of the service"
    )
    parser.add_argument(
        "--seconds", type=float, default=60, help="how long; 0 runs until Ctrl-C"
    )
    parser.add_argument("--every", type=int, default=3, help="seconds between ticks")
    parser.add_argument("--start", type=date.fromisoformat, default=date(2024, 9, 1))
    parser.add_argument("--data-dir", type=Path, default=Path("data/demo"))
    return parser.parse_args()


def clear_data_dir(data_dir: Path) -> None:
    """Empty the servers of an earlier demo in `data_dir`.

    A replay from the start would otherwise be older than what the last run
    stored (and the stream would drop it as already seen), and the answers
    would stay where that run ended.

    Raises:
        SystemExit: `data_dir` holds data no demo made, or a running process
            uses it.
    """
    if not data_dir.exists() or not any(data_dir.iterdir()):
        return
    if not (data_dir / CONFIG_FILE).is_file():
        raise SystemExit(f"{data_dir} holds data of no demo: give an empty --data-dir")
    claim = embedded.claim_data_dir(data_dir)
    if claim is None:
        raise SystemExit(f"{data_dir} is in use by a running service or demo")

    claim.release()
    for name in ("nats", "mongo", "logs"):
        shutil.rmtree(data_dir / name, ignore_errors=True)


def start_service(args: argparse.Namespace, base_url: str) -> subprocess.Popen[bytes]:
    """`python -m cryptostats` against the local server, its log in the data dir."""
    clear_data_dir(args.data_dir)
    args.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = args.data_dir / "service.log"
    environ = {
        **os.environ,
        "COINGECKO_BASE_URL": base_url,
        "NATS_URL": "",
        "MONGO_URI": "",
    }
    command = [
        sys.executable, "-m", "cryptostats",
        "--config", str(write_config(args.data_dir)),
        "--port", str(args.port),
        "--data-dir", str(args.data_dir),
        "--schedule", f"*/{args.every} * * * * *",
    ]  # fmt: skip
    print(f"service log: {log_path}")
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            command, env=environ, stdout=log_file, stderr=subprocess.STDOUT
        )


def write_config(data_dir: Path) -> Path:
    path = data_dir / CONFIG_FILE
    coins = f"[coins]\nids = {list(COINS)!r}\n".replace("'", '"')
    # The local stand-in has no rate limit: no need to space calls out.
    path.write_text(coins + "\n[coingecko]\ncalls_per_minute = 6000\n")
    return path


async def show(session: aiohttp.ClientSession, base: str) -> None:
    """One line per coin: the historical day, price, change and deviation."""
    for coin in COINS:
        stats = await get(session, f"{base}/stats?coin={coin}")
        deviation = await get(session, f"{base}/deviation?coin={coin}")
        if "error" in stats:
            print(f"  {coin:<9} {stats['error']['message']}")
            continue
        change = stats["24hChange"]
        change_text = "n/a" if change is None else f"{change:+.2f}%"
        print(
            f"  {coin:<9} {stats['observedAt'][:10]}"
            f"  price {stats['price']:>12,.2f}  24h {change_text:>8}"
            f"  std(last {deviation['count']:>2}) {deviation['deviation']:>10,.2f}"
        )


async def get(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as response:
        return await response.json()


async def wait_ready(
    session: aiohttp.ClientSession, base: str, process: subprocess.Popen[bytes]
) -> None:
    while process.poll() is None:
        with contextlib.suppress(aiohttp.ClientError):
            async with session.get(f"{base}/healthz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise SystemExit(f"the service exited with code {process.returncode}; see its log")


async def run(args: argparse.Namespace) -> None:
    # SIGTERM, like Ctrl-C, stops the service before the demo exits.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    feeds = {coin: bundled_feed(coin, args.start) for coin in COINS}
    base = f"http://127.0.0.1:{args.port}"
    async with FakeCoinGecko(feeds) as fake, aiohttp.ClientSession() as session:
        print(f"CoinGecko stand-in at {fake.base_url}, replaying from {args.start}")
        process = start_service(args, fake.base_url)
        started = time.monotonic()
        try:
            await wait_ready(session, base, process)
            print(f"service ready at {base} in {time.monotonic() - started:.1f}s")
            await report(session, base, args, started)
        finally:
            process.send_signal(signal.SIGTERM)
            code = await asyncio.to_thread(process.wait)
            print(f"service stopped (exit code {code})")


async def report(
    session: aiohttp.ClientSession, base: str, args: argparse.Namespace, started: float
) -> None:
    while args.seconds <= 0 or time.monotonic() - started < args.seconds:
        await asyncio.sleep(args.every * 2)
        print(f"[{time.monotonic() - started:5.1f}s] GET /stats and /deviation")
        await show(session, base)


def main() -> None:
    args = parse_args()
    with contextlib.suppress(KeyboardInterrupt, asyncio.CancelledError):
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
