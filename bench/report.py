"""BENCHMARKS.md from one run's results."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from importlib import metadata
from typing import Any


def machine() -> list[str]:
    cpu = "unknown"
    with open("/proc/cpuinfo") as file:
        for line in file:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as file:
        mem_gb = int(file.readline().split()[1]) / 1024 / 1024
    wrk = shutil.which("wrk")
    wrk_version = (
        subprocess.run([wrk, "--version"], capture_output=True, text=True)
        .stdout.split("Copyright")[0]
        .strip()
        if wrk
        else "not installed"
    )
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores; RAM {mem_gb:.0f} GB",
        f"- Linux {platform.release()}, Python {platform.python_version()}",
        f"- {wrk_version}; aiohttp {metadata.version('aiohttp')}, "
        f"nats-py {metadata.version('nats-py')}, "
        f"SecantusDB {metadata.version('secantusdb')}",
    ]


def _usage(run: dict[str, Any], name: str) -> str:
    usage = run["usage"][name]
    return f"{usage['cpu']:.2f} / {usage['rss_mb']:.0f}"


def http_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| endpoint | stored quotes | baseline req/s | service req/s | ratio "
        "| service p50 / p99 ms | baseline p50 / p99 ms | errors (svc) "
        "| CPU cores / RSS MB: service, secantusdb, nats |",
        "|---|---:|---:|---:|---:|---|---|---:|---|",
    ]
    for row in rows:
        svc, base = row["service"], row["baseline"]
        run = row["runs"]["service"][-1]
        usage = ", ".join(
            _usage(run, name) for name in ("service", "secantusdb", "nats-server")
        )
        lines.append(
            f"| {row['label']} | {row['size']:,} | {base['rps']:,.0f} "
            f"| {svc['rps']:,.0f} | {row['ratio']:.2f} "
            f"| {svc['p50_ms']:.2f} / {svc['p99_ms']:.2f} "
            f"| {base['p50_ms']:.2f} / {base['p99_ms']:.2f} "
            f"| {svc['errors']} | {usage} |"
        )
    return lines


def markdown(results: dict[str, Any]) -> str:
    args = results["args"]
    command = (
        "make bench ARGS='"
        f"--sizes {args['sizes']} --duration-s {args['duration_s']} "
        f"--rounds {args['rounds']} --ingest-quotes {args['ingest_quotes']} "
        f"--tick-coins {args['tick_coins']} --ticks {args['ticks']}'"
    )
    ingest = results.get("ingest", {})
    tick = results.get("tick", {})
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/run.py` (see the README section *Benchmarks*); every",
        "target is a ratio or a median measured in this one run, on a shared",
        "and noisy machine. Raw figures: `bench/results/<run>/results.json`.",
        "",
        f"Run {results['started']}, command:",
        "",
        f"    {command}",
        "",
        "## Machine",
        "",
        *machine(),
        "",
        "## Ingest (history import)",
        "",
        f"{ingest.get('quotes', 0):,} quotes of one coin through the import path "
        "(Publisher request/reply, JetStream, Store batch write) against a bare",
        "unordered `insert_many` of the same documents in batches of 500 into the",
        "same SecantusDB (run before and after the import; median).",
        "",
        f"- bare insert_many: {ingest.get('bare_rates')} quotes/s",
        f"- import: {ingest.get('import', {}).get('rate')} quotes/s "
        f"({ingest.get('import', {}).get('seconds')} s)",
        f"- **ratio: {ingest.get('ratio')}** (target >= 0.5)",
        "",
        "Seeds, through the same path:",
        "",
        "| coin | quotes | seconds | quotes/s |",
        "|---|---:|---:|---:|",
        *[
            f"| {s['coin']} | {s['quotes']:,} | {s['seconds']} | {s['rate']:,} |"
            for s in results.get("seeds", [])
        ],
        "",
        "## HTTP (wrk -t2 -c32, medians of the rounds, alternating runs)",
        "",
        *http_table(results.get("http", [])),
        "",
        "CPU is the share of one core the process used during the last service",
        "run; RSS is at its end.",
        "",
        "## Latency at half the baseline's rate",
        "",
        "| path | offered req/s | achieved req/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {p['path']} | {p['offered_rps']:,} | {p['rps']:,.0f} "
            f"| {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |"
            for p in results.get("paced", [])
        ],
        "",
        "## Service memory",
        "",
        f"- RSS at start: {results.get('rss_start_mb', {}).get('service', 0):.0f} MB;"
        f" after seeding: {results.get('rss_after_seed_mb', 0):.0f} MB;"
        f" after the {results.get('soak_s', 0)} s of load: "
        f"{results.get('rss_end_mb', {}).get('service', 0):.0f} MB",
        "",
        "## One tick of many coins",
        "",
        f"- {tick.get('coins')} coins, fake CoinGecko on loopback "
        f"({tick.get('coingecko_requests')} requests in all): tick to last write "
        f"{tick.get('ticks_s')} s, **median {tick.get('median_s')} s** "
        "(target < 2 s)",
        "",
        "## /history",
        "",
        "- served by this build: "
        + ("yes" if results.get("history_route") else "no (not measured)"),
        "",
    ]
    return "\n".join(lines)
