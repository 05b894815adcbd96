"""BENCHMARKS.md from one run's results."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
from importlib import metadata
from typing import Any

# The wrk runs of the side-by-side measure (req/s at full load, p99 at half
# rate), all at once: the smallest history, the smallest again, the largest.
SIDES = ("smallest", "again", "largest")

NOTES = [
    "## How it was measured",
    "",
    "- The bench starts nats-server and SecantusDB with the service's own",
    "  embedded-server code (`cryptostats.embedded`) and hands their URLs to",
    "  `python -m cryptostats` through `NATS_URL` / `MONGO_URI`, so that the",
    "  bench can reach the same servers and measure each process on its own.",
    "- Seeds and the ingest measure go through the import path: the bench",
    "  process calls the import command's `publish_history` (request/reply to",
    "  the service's Publisher, JetStream, the service's Store) and",
    "  `wait_until_stored`; nothing is written to the database behind the",
    "  service's back. The seeded quotes are synthetic, 15 minutes apart.",
    "- The baseline is `bench/baseline.py`: aiohttp, one handler, a fixed",
    "  JSON body, no middleware. Baseline and service runs alternate, and each",
    "  row shows the median of its rounds; wrk, the baseline, the service and",
    "  both servers share the same 2 cores. A row's ratio is the median of",
    "  each round's service req/s over the baseline run just before it, so",
    "  that what the machine did at the time falls on both.",
    "- The half-rate latency uses 32 wrk connections each paced by a fixed",
    "  delay (wrk's Lua `delay()`, whole milliseconds), so the achieved rate",
    "  only approaches the offered one; wrk (not wrk2) does not correct for",
    "  coordinated omission.",
    "- Growth is judged side by side: three wrk processes (one thread",
    "  each) run at once, on the smallest history, on the smallest again,",
    "  and on the largest; first at full load, where they share the",
    "  service (req/s), then paced to half the baseline's rate together",
    "  (p99). The change is the median over rounds of each round's change",
    "  from the smallest to the largest history. Run one after the other,",
    "  two runs of the same history differed in p99 by 10-30% on this",
    "  machine, as whatever else it did fell on one run alone; side by",
    "  side, both histories meet the same moments, and the two runs of the",
    "  smallest history show the noise that is left. The sequential",
    "  figures are shown too: every round runs each seeded size in turn",
    "  (baseline, then service), and req/s is compared on the paired",
    "  ratio; at full load p99 measures the queue wrk keeps full.",
    "- The tick is sent on the tick subject by the bench, as the Ticker",
    "  would; the time runs until the Store's stored notice of the last of",
    "  the coins.",
    "",
]


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
            f"| {svc['rps']:,.0f} | {paired_ratio(row['runs']):.2f} "
            f"| {svc['p50_ms']:.2f} / {svc['p99_ms']:.2f} "
            f"| {base['p50_ms']:.2f} / {base['p99_ms']:.2f} "
            f"| {svc['errors']} | {usage} |"
        )
    return lines


def paired_ratio(runs: dict[str, list[dict[str, Any]]]) -> float:
    """The median over rounds of service req/s over the baseline's req/s.

    Each service run follows its own baseline run, so their ratio cancels
    what the shared machine was doing at the time; a ratio of the two
    sides' medians, taken from different rounds, does not.
    """
    pairs = zip(runs["baseline"], runs["service"], strict=True)
    return statistics.median(svc["rps"] / base["rps"] for base, svc in pairs)


def _change(rows: list[dict[str, Any]], side: str, key: str) -> float | None:
    """The signed change of `row[side][key]` from the smallest to the
    largest seeded history, in percent, on whichever endpoint changed most."""
    sizes = sorted({row["size"] for row in rows})
    if len(sizes) < 2:
        return None
    changes = []
    for label in {row["label"] for row in rows}:
        at = {row["size"]: row[side][key] for row in rows if row["label"] == label}
        changes.append((at[sizes[-1]] / at[sizes[0]] - 1) * 100)
    return max(changes, key=abs)


def _ratio_change(rows: list[dict[str, Any]]) -> float | None:
    """The signed change, in percent, of the paired service/baseline ratio
    from the smallest to the largest history, on whichever endpoint changed
    most: the machine's drift between rounds cancels out of it."""
    sizes = sorted({row["size"] for row in rows})
    if len(sizes) < 2:
        return None
    changes = []
    for label in {row["label"] for row in rows}:
        at = {
            row["size"]: paired_ratio(row["runs"])
            for row in rows
            if row["label"] == label
        }
        changes.append((at[sizes[-1]] / at[sizes[0]] - 1) * 100)
    return max(changes, key=abs)


def _side_change(row: dict[str, Any], mode: str, key: str) -> float:
    """The median over rounds of each round's change of `key`, in percent,
    from the smallest history to the largest, measured at the same time."""
    runs = row["runs"][mode]
    pairs = zip(runs["smallest"], runs["largest"], strict=True)
    return statistics.median(_change_of(b, a, key) for b, a in pairs)


def _side_noise(row: dict[str, Any], mode: str, key: str) -> float:
    """The median over rounds of how far `key` moved, in percent, between
    the two runs of the smallest history measured at the same time."""
    runs = row["runs"][mode]
    pairs = zip(runs["smallest"], runs["again"], strict=True)
    return statistics.median(abs(_change_of(b, a, key)) for b, a in pairs)


def _change_of(before: dict[str, Any], after: dict[str, Any], key: str) -> float:
    return (after[key] / before[key] - 1) * 100


def _side_medians(row: dict[str, Any], mode: str, key: str) -> str:
    runs = row["runs"][mode]
    medians = [statistics.median(r[key] for r in runs[side]) for side in SIDES]
    shown = ",.0f" if key == "rps" else ".2f"
    return " / ".join(f"{median:{shown}}" for median in medians)


def side_by_side_table(rows: list[dict[str, Any]]) -> list[str]:
    """Per paced path: req/s at full load and p99 at half rate, of both
    histories measured at once."""
    lines = [
        "| endpoint | measure | smallest / smallest again / largest "
        "| change per round | same history |",
        "|---|---|---|---:|---:|",
    ]
    for row in rows:
        sizes = f"{row['sizes']['smallest']:,} and {row['sizes']['largest']:,}"
        for mode, key, what in (
            ("full", "rps", "req/s, full load"),
            ("paced", "p99_ms", f"p99 ms at {row['offered_rps']:,} req/s"),
        ):
            lines.append(
                f"| {row['label']} ({sizes}) | {what} "
                f"| {_side_medians(row, mode, key)} "
                f"| {_side_change(row, mode, key):+.1f}% "
                f"| {_side_noise(row, mode, key):.1f}% |"
            )
    return lines


def _listed(row: dict[str, Any] | None) -> list[dict[str, Any]]:
    return [row] if row else []


def _verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def targets(results: dict[str, Any]) -> list[str]:
    """One line per target of the issue, with what this run measured."""
    # The throughput and growth targets are about /stats and /deviation.
    rows = [row for row in results.get("http", []) if row["label"] != "/history"]
    lines = ["| target | measured | |", "|---|---|---|"]
    if rows:
        worst = min(paired_ratio(row["runs"]) for row in rows)
        lines.append(
            f"| /stats, /deviation req/s >= 60% of baseline "
            f"| lowest ratio {worst:.2f} | {_verdict(worst >= 0.6)} |"
        )
    paced = results.get("paced", [])
    if paced:
        p99 = max(p["p99_ms"] for p in paced)
        lines.append(
            f"| p99 <= 10 ms at half the baseline's rate | worst p99 {p99:.2f} ms "
            f"| {_verdict(p99 <= 10)} |"
        )
    rps = _ratio_change(rows)
    raw = _change(rows, "service", "rps")
    noise = _change(rows, "baseline", "rps")
    # p99 is compared at the same offered rate: under saturation it measures
    # the queue wrk keeps full, which the baseline shows to be noise.
    sides = results.get("side_by_side", [])
    full_load_p99 = _change(rows, "service", "p99_ms")
    if rps is not None and noise is not None and sides:
        side_rps = max((_side_change(row, "full", "rps") for row in sides), key=abs)
        p99 = max((_side_change(row, "paced", "p99_ms") for row in sides), key=abs)
        p99_noise = max(_side_noise(row, "paced", "p99_ms") for row in sides)
        lines.append(
            f"| req/s and p99 change < 10% from the smallest to the largest "
            f"history | side by side: req/s {side_rps:+.1f}%, p99 at half rate "
            f"{p99:+.1f}% (the same history twice: {p99_noise:.1f}%); one "
            f"after the other: req/s relative to the baseline {rps:+.1f}% (raw "
            f"{raw:+.1f}%, the baseline's own {noise:+.1f}%), p99 at full load "
            f"{full_load_p99:+.1f}% | {_verdict(max(abs(side_rps), abs(p99)) < 10)} |"
        )
    tick = results.get("tick")
    if tick:
        lines.append(
            f"| one tick of {tick['coins']} coins < 2 s | median "
            f"{tick['median_s']} s | {_verdict(tick['median_s'] < 2)} |"
        )
    ingest = results.get("ingest")
    if ingest:
        lines.append(
            f"| import >= 50% of bare insert_many | {ingest['ratio']:.2f} "
            f"| {_verdict(ingest['ratio'] >= 0.5)} |"
        )
    end = results.get("rss_end_mb", {}).get("service")
    if end:
        start = results.get("rss_after_seed_mb", 0)
        lines.append(
            f"| service RSS < 120 MB after the load, no growth | {start:.0f} MB "
            f"before, {end:.0f} MB after | {_verdict(end < 120)} |"
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
        "## Targets",
        "",
        *targets(results),
        "",
        "## Ingest (history import)",
        "",
        f"{ingest.get('quotes', 0):,} quotes of one coin through the import path",
        "(Publisher request/reply, JetStream, Store batch write) against a bare",
        "unordered `insert_many` of the same documents in batches of 500 into",
        "the same SecantusDB (run before and after the import; median).",
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
        *http_table(results.get("http", []) + _listed(results.get("access_log"))),
        "",
        "CPU is the share of one core the process used during the last service",
        "run; RSS is at its end. The service runs at `--log-level warning`,",
        "except in the row *access log on*: the same service restarted at the",
        "default level, info, writing one `http_request` line per request to",
        "a file (`http.access_log = false` does the same as warning for it).",
        "",
        "## Latency at half the baseline's rate",
        "",
        "| endpoint | stored quotes | offered req/s | achieved req/s | p50 ms "
        "| p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
        *[
            f"| {p['label']} | {p['size']:,} | {p['offered_rps']:,} | {p['rps']:,.0f} "
            f"| {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {p['errors']} |"
            for p in results.get("paced", [])
        ],
        "",
        "## p99 with history size, side by side",
        "",
        "Three wrk processes at once on each path: the smallest history,",
        "the smallest again, and the largest; at full load (10 connections",
        "each), then paced to half the baseline's rate together. Medians of",
        "the rounds; the change is the median of each round's own change;",
        "*same history* is the median of how far the two runs of the",
        "smallest history differed in a round.",
        "",
        *side_by_side_table(results.get("side_by_side", [])),
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
        *NOTES,
    ]
    return "\n".join(lines)
