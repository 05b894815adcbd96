"""Every Prometheus metric cryptostats exports, in one place.

Each metric is incremented where the thing it counts happens, in whichever
actor that is. Metrics live in the process's default registry, so a process
exposes the counters of the actors it runs: with actors split across
processes, each process's `/metrics` shows only its own share.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

HTTP_REQUESTS = Counter(
    "cryptostats_http_requests",
    "HTTP requests answered, by route template, method and status.",
    ["route", "method", "status"],
)
HTTP_LATENCY = Histogram(
    "cryptostats_http_request_duration_seconds",
    "Time from receiving an HTTP request to having its response, by route.",
    ["route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
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
