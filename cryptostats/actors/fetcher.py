"""Fetcher: on each tick, fetches quotes from CoinGecko and hands them on.

Ticks arrive through a queue group, so however many Fetchers run, each tick
is fetched once. A tick that arrives while a fetch still runs is skipped, and
a fetch never waits for CoinGecko past the next scheduled tick. A quote whose
`observed_at` was already handed on is not handed on again.
The batch goes to the Publisher by request/reply and counts as handed on
only once the Publisher answers that every quote is in the stream.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import aiohttp
import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from cryptostats import metrics, subjects
from cryptostats.actors import ActorContext, subscription
from cryptostats.actors.ticker import next_tick
from cryptostats.coingecko import CoinGeckoClient, FetchResult
from cryptostats.messages import Quote, dumps, encode_quotes, from_iso, loads

log = structlog.get_logger("cryptostats.fetcher", actor="fetcher")

HANDOFF_ATTEMPTS = 5
EPOCH = datetime.fromtimestamp(0, UTC)


class Fetcher:
    """See the module docstring."""

    name = "fetcher"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings
        self._coins = context.settings.coins.tracked
        self._busy = False
        # The newest observed_at handed on per coin: an unchanged
        # last_updated_at is the same quote again.
        self._handed_on: dict[str, datetime] = {}

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with aiohttp.ClientSession() as session:
            client = CoinGeckoClient(self._settings.coingecko, session)
            if self._settings.coingecko.api_key:
                await client.check_access()
            async with (
                subscription(self._nats, subjects.TICK, subjects.FETCHER_QUEUE) as sub,
                anyio.create_task_group() as group,
            ):
                task_status.started()
                async for msg in sub.messages:
                    accepted = self._on_tick(group, client, msg.data)
                    if msg.reply:
                        await msg.respond(dumps({"accepted": accepted}))

    def _on_tick(self, group: TaskGroup, client: CoinGeckoClient, data: bytes) -> bool:
        tick_id, scheduled_at = _tick_fields(data)
        if self._busy:
            log.warning(
                "tick_skipped", tick_id=tick_id, reason="previous fetch running"
            )
            return False

        self._busy = True
        deadline = self._deadline(scheduled_at)
        group.start_soon(self._fetch_and_hand_on, client, tick_id, deadline)
        return True

    def _deadline(self, scheduled_at: datetime | None) -> float:
        """The monotonic time of the tick after the one scheduled at
        `scheduled_at`: a wait past it would run into that tick."""
        now = datetime.now(UTC)
        # A tick read a little before its moment (clocks differ between
        # machines) still counts from its moment.
        after = max(scheduled_at, now) if scheduled_at else now
        following = next_tick(self._settings.schedule.cron, after)

        return time.monotonic() + (following - now).total_seconds()

    async def _fetch_and_hand_on(
        self, client: CoinGeckoClient, tick_id: str, deadline: float
    ) -> None:
        started = time.monotonic()
        try:
            result = await client.fetch(
                self._coins, self._settings.coins.vs_currency, deadline
            )
        finally:
            self._busy = False

        fresh = self._fresh(result.quotes)
        _log_dropped(result, tick_id)
        _count_fetched(result)
        published = await self._hand_on(fresh, tick_id)
        if published:
            self._handed_on.update((q.coin, q.observed_at) for q in fresh)
        log.info(
            "quotes_fetched",
            tick_id=tick_id,
            asked=len(self._coins),
            received=len(result.quotes),
            missing=len(result.missing),
            rejected=len(result.rejected),
            unchanged=len(result.quotes) - len(fresh),
            failed=len(result.failed),
            skipped=len(result.skipped),
            attempts=result.attempts,
            published=len(fresh) if published else 0,
            elapsed_ms=round((time.monotonic() - started) * 1000),
        )

    def _fresh(self, quotes: list[Quote]) -> list[Quote]:
        return [
            quote
            for quote in quotes
            if self._handed_on.get(quote.coin, EPOCH) < quote.observed_at
        ]

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
            if attempt < HANDOFF_ATTEMPTS:
                await anyio.sleep(min(2**attempt, 30))

        log.error("quotes_not_published", tick_id=tick_id, quotes=len(quotes))
        return False


def _tick_fields(data: bytes) -> tuple[str, datetime | None]:
    try:
        tick = loads(data)
        tick_id = str(tick.get("tickId", "?"))
    except (ValueError, AttributeError):
        return "?", None

    try:
        return tick_id, from_iso(str(tick["scheduledAt"]))
    except (KeyError, ValueError):
        return tick_id, None


def _count_fetched(result: FetchResult) -> None:
    metrics.QUOTES_FETCHED.inc(len(result.quotes))
    if result.missing:
        metrics.QUOTES_REJECTED.labels(reason="missing").inc(len(result.missing))
    if result.rejected:
        metrics.QUOTES_REJECTED.labels(reason="invalid").inc(len(result.rejected))


def _log_dropped(result: FetchResult, tick_id: str) -> None:
    if result.missing:
        log.warning("coins_missing", tick_id=tick_id, coins=result.missing)
    for coin, reason in result.rejected.items():
        log.warning("quote_rejected", tick_id=tick_id, coin=coin, reason=reason)
    if result.skipped:
        log.warning(
            "fetch_deferred",
            tick_id=tick_id,
            wait_s=result.wait_s,
            skipped=len(result.skipped),
            reason="rate limited until after the next tick",
        )
