"""Fetcher: on each tick, fetches quotes from CoinGecko and hands them on.

Ticks arrive through a queue group, so however many Fetchers run, each tick
is fetched once. A tick that arrives while a fetch still runs is skipped.
The batch goes to the Publisher by request/reply and counts as handed on
only once the Publisher answers that every quote is in the stream.
"""

from __future__ import annotations

import time

import aiohttp
import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from cryptostats import metrics, subjects
from cryptostats.actors import ActorContext, subscription
from cryptostats.coingecko import CoinGeckoClient, FetchResult
from cryptostats.errors import UpstreamError, UpstreamStatusError
from cryptostats.messages import Quote, encode_quotes, loads

log = structlog.get_logger("cryptostats.fetcher", actor="fetcher")

HANDOFF_ATTEMPTS = 5


class Fetcher:
    """See the module docstring."""

    name = "fetcher"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings
        self._busy = False

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with aiohttp.ClientSession() as session:
            client = CoinGeckoClient(self._settings.coingecko, session)
            async with (
                subscription(self._nats, subjects.TICK, subjects.FETCHER_QUEUE) as sub,
                anyio.create_task_group() as group,
            ):
                task_status.started()
                async for msg in sub.messages:
                    self._on_tick(group, client, msg.data)

    def _on_tick(self, group: TaskGroup, client: CoinGeckoClient, data: bytes) -> None:
        tick_id = _tick_id(data)
        if self._busy:
            log.warning(
                "tick_skipped", tick_id=tick_id, reason="previous fetch running"
            )
            return

        self._busy = True
        group.start_soon(self._fetch_and_hand_on, client, tick_id)

    async def _fetch_and_hand_on(self, client: CoinGeckoClient, tick_id: str) -> None:
        started = time.monotonic()
        try:
            result = await client.fetch(
                self._settings.coins.ids, self._settings.coins.vs_currency
            )
        except UpstreamError as exc:
            metrics.UPSTREAM_ERRORS.labels(kind=upstream_error_kind(exc)).inc()
            log.warning("fetch_failed", tick_id=tick_id, error=str(exc))
            return
        finally:
            self._busy = False

        _log_dropped(result)
        _count_fetched(result)
        published = await self._hand_on(result.quotes, tick_id)
        log.info(
            "quotes_fetched",
            tick_id=tick_id,
            asked=len(self._settings.coins.ids),
            received=len(result.quotes),
            missing=len(result.missing),
            rejected=len(result.rejected),
            attempts=result.attempts,
            published=published,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    async def _hand_on(self, quotes: list[Quote], tick_id: str) -> bool:
        if not quotes:
            return True

        payload = encode_quotes(quotes)
        timeout_s = self._settings.nats.request_timeout_s
        for attempt in range(1, HANDOFF_ATTEMPTS + 1):
            try:
                reply = await self._nats.request(
                    subjects.QUOTES, payload, timeout=timeout_s
                )
                answer = loads(reply.data)
                if answer.get("ok"):
                    return True
                log.warning("handoff_refused", tick_id=tick_id, answer=answer)
            except (NatsTimeoutError, NoRespondersError) as exc:
                log.warning(
                    "handoff_retry",
                    tick_id=tick_id,
                    attempt=attempt,
                    error=type(exc).__name__,
                )
            await anyio.sleep(min(2**attempt, 30))

        log.error("quotes_not_published", tick_id=tick_id, quotes=len(quotes))
        return False


def _tick_id(data: bytes) -> str:
    try:
        return str(loads(data).get("tickId", "?"))
    except (ValueError, AttributeError):
        return "?"


def upstream_error_kind(exc: UpstreamError) -> str:
    """A short label for a failed fetch: rate_limited, server_error, ..."""
    if not isinstance(exc, UpstreamStatusError):
        return "unreachable"
    if exc.status == 429:
        return "rate_limited"
    if exc.status >= 500:
        return "server_error"

    return "bad_answer"


def _count_fetched(result: FetchResult) -> None:
    metrics.QUOTES_FETCHED.inc(len(result.quotes))
    if result.missing:
        metrics.QUOTES_REJECTED.labels(reason="missing").inc(len(result.missing))
    if result.rejected:
        metrics.QUOTES_REJECTED.labels(reason="invalid").inc(len(result.rejected))


def _log_dropped(result: FetchResult) -> None:
    if result.missing:
        log.warning("coins_missing", coins=result.missing)
    for coin, reason in result.rejected.items():
        log.warning("quote_rejected", coin=coin, reason=reason)
