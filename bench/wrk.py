"""Runs wrk and reads its report: req/s, p50, p99, errors."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

INSTALL_HINT = "wrk not found: install it with `apt-get install -y wrk`"
# One request per connection every `delay_ms`: a fixed offered rate.
PACED_SCRIPT = """
local delay_ms = {delay_ms}
function delay() return delay_ms end
"""


@dataclass
class WrkResult:
    """What one wrk run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int


def require_wrk() -> str:
    """The wrk executable.

    Raises:
        SystemExit: wrk is not installed.
    """
    path = shutil.which("wrk")
    if path is None:
        raise SystemExit(INSTALL_HINT)
    return path


def run_wrk(
    url: str,
    duration_s: int,
    threads: int = 2,
    connections: int = 32,
    delay_ms: float | None = None,
    script_dir: Path | None = None,
) -> WrkResult:
    """Run wrk against `url`; with `delay_ms`, pace each connection."""
    argv = _argv(duration_s, threads, connections, delay_ms, script_dir)
    output = subprocess.run(
        [*argv, url], capture_output=True, text=True, check=True
    ).stdout

    return parse(output)


def run_side_by_side(
    urls: list[str],
    duration_s: int,
    connections: int,
    delay_ms: float | None = None,
    script_dir: Path | None = None,
) -> list[WrkResult]:
    """One wrk per URL (one thread each), all running at once, so that
    whatever the machine does meanwhile falls on every URL alike; with
    `delay_ms`, each connection is paced."""
    argv = _argv(duration_s, 1, connections, delay_ms, script_dir)
    processes = [
        subprocess.Popen([*argv, url], stdout=subprocess.PIPE, text=True)
        for url in urls
    ]
    outputs = [process.communicate()[0] for process in processes]
    if any(process.returncode for process in processes):
        raise RuntimeError(f"wrk failed on one of {urls}")

    return [parse(output) for output in outputs]


def _argv(
    duration_s: int,
    threads: int,
    connections: int,
    delay_ms: float | None,
    script_dir: Path | None,
) -> list[str]:
    argv = [
        require_wrk(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s}s",
        "--latency",
    ]
    if delay_ms is not None and script_dir is not None:
        script = script_dir / "paced.lua"
        script.write_text(PACED_SCRIPT.format(delay_ms=max(0, int(delay_ms))))
        argv += ["-s", str(script)]

    return argv


def parse(output: str) -> WrkResult:
    """Read wrk's `--latency` report."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))
    requests = int(re.search(r"(\d+) requests in", output).group(1))
    errors = sum(
        int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output)
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors += int(non_2xx.group(1)) if non_2xx else 0

    return WrkResult(
        rps=rps,
        p50_ms=_latency(output, "50"),
        p99_ms=_latency(output, "99"),
        errors=errors,
        requests=requests,
    )


def _latency(output: str, percentile: str) -> float:
    match = re.search(rf"^\s+{percentile}%\s+([\d.]+)(us|ms|s)\s*$", output, re.M)
    if match is None:
        return float("nan")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
