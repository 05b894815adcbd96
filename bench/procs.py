"""CPU and RSS of a process, read from /proc (Linux)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User plus system CPU seconds the process has used so far."""
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


def rss_mb(pid: int) -> float:
    """Resident set size in MB."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Usage:
    """CPU share (1.0 = one core) over a span, and RSS at its end."""

    cpu: float
    rss_mb: float


class Meter:
    """Measures the CPU each named process uses between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self._start: dict[str, float] = {}
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = {name: cpu_s(pid) for name, pid in self.pids.items()}

    def stop(self) -> dict[str, Usage]:
        span = time.monotonic() - self._t0
        return {
            name: Usage(
                round((cpu_s(pid) - self._start[name]) / span, 2),
                round(rss_mb(pid), 1),
            )
            for name, pid in self.pids.items()
        }
