"""Ticker: publishes a tick on each moment of the cron schedule."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import structlog
from anyio.abc import TaskStatus
from croniter import croniter
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from cryptostats import metrics, subjects
from cryptostats.actors import ActorContext
from cryptostats.messages import dumps, loads, to_iso

log = structlog.get_logger("cryptostats.ticker", actor="ticker")

TICK_RETRY_S = 0.5


def next_tick(cron: str, after: datetime) -> datetime:
    """The first moment of `cron` strictly after `after` (6 fields: seconds first)."""
    seconds_first = len(cron.split()) == 6
    schedule = croniter(cron, after, second_at_beginning=seconds_first)

    return schedule.get_next(datetime).astimezone(UTC)


def tick_interval_s(cron: str, after: datetime) -> float:
    """Seconds between the next two moments of `cron` after `after`."""
    first = next_tick(cron, after)

    return (next_tick(cron, first) - first).total_seconds()


class Ticker:
    """Publishes `{"tickId", "scheduledAt"}` on the tick subject.

    The next moment is always computed from the wall clock, so a slow tick
    or a suspended process never makes the schedule drift.
    """

    name = "ticker"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._schedule = context.settings.schedule
        self._timeout_s = context.settings.nats.request_timeout_s

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        task_status.started()
        last = datetime.now(UTC)
        if self._schedule.tick_at_start:
            await self._tick(last)

        while True:
            # A sleep may end a hair early; never tick the same moment twice.
            moment = next_tick(self._schedule.cron, max(datetime.now(UTC), last))
            await anyio.sleep(max(0.0, (moment - datetime.now(UTC)).total_seconds()))
            await self._tick(moment)
            last = moment

    async def _tick(self, moment: datetime) -> None:
        """Send the tick by request/reply, so that a tick no Fetcher heard
        (one sent while Fetchers start, or none runs) is sent again until
        one answers or the next tick is due."""
        tick_id = to_iso(moment)
        payload = dumps({"tickId": tick_id, "scheduledAt": tick_id})
        give_up_at = next_tick(self._schedule.cron, moment)
        waited = False
        while True:
            answer = await self._request(payload)
            if answer is not None:
                metrics.TICKS.inc()
                log.info("tick", tick_id=tick_id, accepted=answer.get("accepted"))
                return
            if datetime.now(UTC) + timedelta(seconds=TICK_RETRY_S) >= give_up_at:
                log.warning("tick_unheard", tick_id=tick_id, reason="no fetcher")
                return
            if not waited:
                log.info("tick_waiting_for_fetcher", tick_id=tick_id)
                waited = True
            await anyio.sleep(TICK_RETRY_S)

    async def _request(self, payload: bytes) -> dict[str, Any] | None:
        try:
            reply = await self._nats.request(
                subjects.TICK, payload, timeout=self._timeout_s
            )
        except (NoRespondersError, NatsTimeoutError):
            return None

        try:
            answer = loads(reply.data)
        except ValueError:
            return {}
        return answer if isinstance(answer, dict) else {}
