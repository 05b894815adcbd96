"""Every Prometheus metric cryptostats exports, in one place.

Each metric is incremented where the thing it counts happens, in whichever
actor that is. Metrics live in the process's default registry, so a process
exposes the counters of the actors it runs: with actors split across
processes, each process's `/metrics` shows only its own share.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, Counter, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


class HttpMetrics:
    """Requests answered and their latency, by route (and method and status).

    Counted on every request with a dict update and a bisect: prometheus
    client's own Counter and Histogram take a lock and look up a labelled
    child per update, which cost as much as a whole /stats answer served
    from memory. prometheus_client still writes the exposition, from
    `collect`. Updated and collected on the event loop's thread only.
    """

    def __init__(self, buckets_s: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        self._buckets_s = buckets_s
        self._requests: dict[tuple[str, str, int], int] = {}
        # Per route: a count per bucket, then +Inf, then the sum of seconds.
        self._latency: dict[str, list[float]] = {}

    def observe(self, route: str, method: str, status: int, elapsed_s: float) -> None:
        """Count one answered request that took `elapsed_s`."""
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        counts = self._latency.get(route)
        if counts is None:
            counts = self._latency[route] = [0] * (len(self._buckets_s) + 2)
        counts[bisect_left(self._buckets_s, elapsed_s)] += 1
        counts[-1] += elapsed_s

    def collect(self) -> Iterator[Metric]:
        """The two metric families, for prometheus_client's registry."""
        requests = CounterMetricFamily(
            "cryptostats_http_requests",
            "HTTP requests answered, by route template, method and status.",
            labels=["route", "method", "status"],
        )
        for (route, method, status), count in self._requests.items():
            requests.add_metric([route, method, str(status)], count)
        yield requests

        latency = HistogramMetricFamily(
            "cryptostats_http_request_duration_seconds",
            "Time from receiving an HTTP request to having its response, by route.",
            labels=["route"],
        )
        bounds = [*(floatToGoString(b) for b in self._buckets_s), "+Inf"]
        for route, counts in self._latency.items():
            latency.add_metric(
                [route],
                list(zip(bounds, accumulate(counts[:-1]), strict=True)),
                sum_value=counts[-1],
            )
        yield latency


HTTP = HttpMetrics()
REGISTRY.register(HTTP)

TICKS = Counter("cryptostats_ticks", "Ticks published by the Ticker.")
QUOTES_FETCHED = Counter(
    "cryptostats_quotes_fetched", "Valid quotes received from the price source."
)
QUOTES_REJECTED = Counter(
    "cryptostats_quotes_rejected",
    "Quotes dropped by validation (missing or unusable values).",
    ["reason"],
)
QUOTES_STORED = Counter(
    "cryptostats_quotes_stored",
    "Price events written by the Store, by outcome: new, or already stored.",
    ["outcome"],
)
UPSTREAM_ERRORS = Counter(
    "cryptostats_upstream_errors",
    "Fetches that failed after their retries, by kind of failure.",
    ["kind"],
)
NATS_RECONNECTS = Counter(
    "cryptostats_nats_reconnects", "Times the NATS connection was re-established."
)
ACTOR_RESTARTS = Counter(
    "cryptostats_actor_restarts", "Actor restarts after a crash, by actor.", ["actor"]
)


def exposition() -> tuple[bytes, str]:
    """The current metrics in Prometheus text format, and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
