"""The benchmark suite: `make bench` (or `.venv/bin/python -m bench.run --help`).

Starts nats-server and SecantusDB (the service's own embedded servers), the
service as `python -m cryptostats`, a bare aiohttp baseline, and a fake
CoinGecko, all on loopback; seeds history through the service's ingest path;
drives the API with wrk, alternating baseline and service; measures one tick
of many coins; writes BENCHMARKS.md. Every target is a ratio in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench import ingest, report, ticks
from bench.procs import Meter, rss_mb
from bench.wrk import require_wrk, run_side_by_side, run_wrk
from cryptostats import embedded
from cryptostats.main import connect_nats

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench", description=__doc__)
    parser.add_argument(
        "--sizes",
        default="100,100000,1000000",
        help="stored quotes per seeded coin, comma-separated",
    )
    parser.add_argument("--duration-s", type=int, default=8, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per pair")
    parser.add_argument("--ingest-quotes", type=int, default=20_000)
    parser.add_argument("--tick-coins", type=int, default=1000)
    parser.add_argument("--ticks", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "BENCHMARKS.md")
    parser.add_argument(
        "--report-only",
        type=Path,
        metavar="RESULTS_JSON",
        help="measure nothing: write --out from an earlier run's results.json",
    )
    return parser.parse_args(argv)


def start_process(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as output:
        return subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdout=output,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )


async def wait_http(url: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            try:
                async with session.get(url) as response:
                    if response.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout_s}s")


def write_config(path: Path, coins: list[str], port: int, database: str) -> None:
    ids = ", ".join(f'"{coin}"' for coin in coins)
    path.write_text(
        f"""[service]
data_dir = "{path.parent / "service-data"}"
[schedule]
cron = "0 0 1 1 *"
tick_at_start = false
[coins]
ids = [{ids}]
[coingecko]
# The fake on loopback has no rate limit to respect.
calls_per_minute = 60000
[nats]
request_timeout_s = 30.0
[mongo]
database = "{database}"
[http]
port = {port}
"""
    )


class Service:
    """`python -m cryptostats` on the bench's servers."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        coins: list[str],
        database: str | None = None,
        log_level: str = "warning",
    ) -> None:
        self.port = embedded.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database = database or f"bench_{self.port}"
        config = workdir / f"service-{self.port}.toml"
        write_config(config, coins, self.port, self.database)
        argv = ["-m", "cryptostats", "--config", str(config), "--log-level", log_level]
        self.process = start_process(
            [sys.executable, *argv],
            env,
            workdir / f"service-{self.port}.log",
        )

    async def ready(self) -> None:
        await wait_http(f"{self.url}/healthz")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# (label, path with the seeded coin's id in place of {coin}).
ENDPOINTS = [
    ("/stats", "/stats?coin={coin}"),
    ("/deviation window=10", "/deviation?coin={coin}&window=10"),
    ("/deviation window=1000", "/deviation?coin={coin}&window=1000"),
    ("/history", "/history?coin={coin}"),
]
# The paths whose latency is measured at half the baseline's rate.
PACED = [ENDPOINTS[0], ENDPOINTS[2]]


def drive_http(
    service: Service,
    baseline_url: str,
    meter: Meter,
    sizes: dict[int, str],
    args: Any,
) -> list[dict[str, Any]]:
    """wrk on each endpoint: in every round, a baseline run and a service
    run at each seeded size in turn, so that the machine's drift falls on
    every size alike. One row per endpoint and size, with the medians."""
    rows = []
    sides = (("baseline", baseline_url), ("service", service.url))
    for label, template in ENDPOINTS:
        runs: dict[int, dict[str, list[dict[str, Any]]]] = {
            size: {"baseline": [], "service": []} for size in sizes
        }
        for _ in range(args.rounds):
            for size, coin in sizes.items():
                path = template.format(coin=coin)
                for side, root in sides:
                    runs[size][side].append(metered(meter, root + path, args))
        for size, coin in sizes.items():
            path = template.format(coin=coin)
            row = {"label": label, "size": size, "path": path, **_medians(runs[size])}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def metered(meter: Meter, url: str, args: Any) -> dict[str, Any]:
    """One wrk run at full load, with each process's CPU and RSS."""
    meter.start()
    result = run_wrk(url, args.duration_s)
    usage = meter.stop()
    return {**asdict(result), "usage": {k: asdict(v) for k, v in usage.items()}}


def _medians(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {"runs": runs}
    for side, results in runs.items():
        out[side] = _median_of(results)
    out["ratio"] = report.paired_ratio(runs)
    return out


def paced_latency(
    service: Service,
    baseline_rps: float,
    sizes: dict[int, str],
    args: Any,
    workdir: Path,
) -> list[dict[str, Any]]:
    """The service offered half the baseline's rate (32 paced connections),
    on each paced path at each seeded size in turn, round after round.
    One row per path and size, with the medians."""
    delay_ms = 32 * 1000 / (baseline_rps / 2)
    rows = []
    for label, template in PACED:
        runs: dict[int, list[dict[str, Any]]] = {size: [] for size in sizes}
        for _ in range(args.rounds):
            for size, coin in sizes.items():
                url = service.url + template.format(coin=coin)
                result = run_wrk(
                    url, args.duration_s, delay_ms=delay_ms, script_dir=workdir
                )
                runs[size].append(asdict(result))

        for size, coin in sizes.items():
            row = {
                "label": label,
                "path": template.format(coin=coin),
                "size": size,
                "offered_rps": round(baseline_rps / 2),
                **_median_of(runs[size]),
                "runs": runs[size],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


# Side by side at full load: connections per wrk (three make about 32).
SIDE_CONNECTIONS = 10
# Side by side at half rate: each connection's pause; the count of
# connections sets the rate, since wrk paces in whole milliseconds.
SIDE_DELAY_MS = 4


def side_by_side(
    service: Service,
    baseline_rps: float,
    sizes: dict[int, str],
    args: Any,
    workdir: Path,
) -> list[dict[str, Any]]:
    """req/s and p99 of the smallest and the largest history measured at once.

    Run one after the other, two runs of the same history differ in p99
    by 10-30% on this shared machine: whatever else it does in a run
    falls on that run alone. Here three wrk processes run at the same
    time, on the smallest history, on the smallest again, and on the
    largest: at full load, where they share the service, and paced to
    half the baseline's rate together. The change with history size is
    read within each round; the two runs of the smallest history show
    what noise is left. One row per paced path.
    """
    sides = report.SIDES
    rate_each = baseline_rps / 2 / len(sides)
    paced_connections = max(1, round(rate_each * SIDE_DELAY_MS / 1000))
    coins = {"smallest": sizes[min(sizes)], "again": sizes[min(sizes)]}
    coins["largest"] = sizes[max(sizes)]
    rows = []
    for label, template in PACED:
        urls = [service.url + template.format(coin=coins[side]) for side in sides]
        runs: dict[str, dict[str, list[dict[str, Any]]]] = {
            mode: {side: [] for side in sides} for mode in ("full", "paced")
        }
        for _ in range(args.rounds):
            full = run_side_by_side(urls, args.duration_s, SIDE_CONNECTIONS)
            paced = run_side_by_side(
                urls, args.duration_s, paced_connections, SIDE_DELAY_MS, workdir
            )
            for mode, results in (("full", full), ("paced", paced)):
                for side, result in zip(sides, results, strict=True):
                    runs[mode][side].append(asdict(result))

        row = {
            "label": label,
            "sizes": {"smallest": min(sizes), "largest": max(sizes)},
            "offered_rps": round(paced_connections * 1000 / SIDE_DELAY_MS * len(sides)),
            "runs": runs,
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    medians = {
        key: statistics.median(r[key] for r in runs)
        for key in ("rps", "p50_ms", "p99_ms")
    }
    return medians | {"errors": sum(r["errors"] for r in runs)}


async def run(args: argparse.Namespace) -> None:
    require_wrk()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = RESULTS / stamp
    workdir.mkdir(parents=True)
    nats_server = embedded.embedded_nats(workdir)
    mongo_server = embedded.embedded_mongo(workdir)
    await nats_server.start()
    await mongo_server.start()
    env = {
        "NATS_URL": embedded.nats_url(nats_server),
        "MONGO_URI": embedded.mongo_uri(mongo_server),
    }
    results: dict[str, Any] = {
        "started": stamp,
        "args": vars(args) | {"out": str(args.out)},
    }
    try:
        await _measure(args, workdir, env, nats_server, mongo_server, results)
    finally:
        (workdir / "results.json").write_text(
            json.dumps(results, indent=1, default=str)
        )
        await mongo_server.stop()
        await nats_server.stop()

    args.out.write_text(report.markdown(results))
    print(f"wrote {args.out} and {workdir / 'results.json'}")


async def _measure(args, workdir, env, nats_server, mongo_server, results) -> None:
    sizes = {int(size): f"bench-{size}" for size in args.sizes.split(",")}
    client = await connect_nats(env["NATS_URL"])
    service = Service(workdir, env, list(sizes.values()))
    baseline_port = embedded.free_port()
    baseline = start_process(
        [sys.executable, str(REPO / "bench" / "baseline.py"), str(baseline_port)],
        {},
        workdir / "baseline.log",
    )
    baseline_url = f"http://127.0.0.1:{baseline_port}"
    try:
        await service.ready()
        await wait_http(f"{baseline_url}/stats")
        pids = {
            "service": service.process.pid,
            "baseline": baseline.pid,
            "nats-server": nats_server.pid,
            "secantusdb": mongo_server.pid,
        }
        results["rss_start_mb"] = {name: rss_mb(pid) for name, pid in pids.items()}
        results["ingest"] = await ingest.compare(
            client, env["MONGO_URI"], args.ingest_quotes
        )
        print(json.dumps(results["ingest"]), flush=True)
        results["seeds"] = []
        for size, coin in sizes.items():
            seeded = await ingest.seed(client, coin, size)
            results["seeds"].append(seeded)
            print(json.dumps(seeded), flush=True)
        meter = Meter(pids)
        soak_started = time.monotonic()
        results["rss_after_seed_mb"] = rss_mb(service.process.pid)
        results["http"] = await asyncio.to_thread(
            drive_http, service, baseline_url, meter, sizes, args
        )
        biggest = sizes[max(sizes)]
        baseline_rps = statistics.median(
            row["baseline"]["rps"] for row in results["http"]
        )
        results["paced"] = await asyncio.to_thread(
            paced_latency, service, baseline_rps, sizes, args, workdir
        )
        results["side_by_side"] = await asyncio.to_thread(
            side_by_side, service, baseline_rps, sizes, args, workdir
        )
        results["soak_s"] = round(time.monotonic() - soak_started)
        results["rss_end_mb"] = {name: rss_mb(pid) for name, pid in pids.items()}
        results["history_route"] = await _has_history(service.url, biggest)
        service.stop()
        results["access_log"] = await access_logged(
            workdir, env, sizes, service.database, baseline_url, pids, args
        )
    finally:
        service.stop()
        baseline.terminate()
        baseline.wait(10)

    results["tick"] = await ticks.measure(
        client, workdir, env, args.tick_coins, args.ticks, Service
    )
    await client.drain()


async def access_logged(
    workdir: Path,
    env: dict[str, str],
    sizes: dict[int, str],
    database: str,
    baseline_url: str,
    pids: dict[str, int],
    args: Any,
) -> dict[str, Any]:
    """/stats of the largest history again, the service now at the default
    log level (info): one access-log line per request, written to a file."""
    service = Service(workdir, env, list(sizes.values()), database, "info")
    try:
        await service.ready()
        meter = Meter(pids | {"service": service.process.pid})
        sides = (("baseline", baseline_url), ("service", service.url))
        path = ENDPOINTS[0][1].format(coin=sizes[max(sizes)])
        runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "service": []}
        for _ in range(args.rounds):
            for side, root in sides:
                run = await asyncio.to_thread(metered, meter, root + path, args)
                runs[side].append(run)
    finally:
        service.stop()
    row = {"label": "/stats, access log on", "size": max(sizes), "path": path}
    return row | _medians(runs)


async def _has_history(url: str, coin: str) -> bool:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{url}/history?coin={coin}") as response:
            return response.status == 200


def main() -> None:
    args = parse_args()
    if args.report_only is not None:
        results = json.loads(args.report_only.read_text())
        args.out.write_text(report.markdown(results))
        return

    asyncio.run(run(args))


if __name__ == "__main__":
    main()
