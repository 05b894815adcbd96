"""Counters of what other actors do, incremented where it happens."""

from __future__ import annotations

import anyio
from anyio.abc import TaskStatus
from prometheus_client import REGISTRY

from cryptostats.config import Settings, SupervisorSettings
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.supervisor import Supervisor
from tests.conftest import run_actors, wait_for


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class CrashesTwice:
    """An actor that crashes on its first two starts, then serves."""

    name = "crashes_twice"

    def __init__(self) -> None:
        self.starts = 0

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        self.starts += 1
        if self.starts <= 2:
            raise RuntimeError("boom")
        task_status.started()
        await anyio.sleep_forever()


async def test_each_actor_restart_is_counted_by_actor() -> None:
    before = sample("cryptostats_actor_restarts_total", actor="crashes_twice")
    supervisor = Supervisor(
        [CrashesTwice()], SupervisorSettings(backoff_initial_s=0.01, backoff_max_s=0.02)
    )

    async with anyio.create_task_group() as group:
        await group.start(supervisor.run)
        await supervisor.stop()

    assert (
        sample("cryptostats_actor_restarts_total", actor="crashes_twice") == before + 2
    )


async def test_a_failed_fetch_is_counted_by_kind_and_a_tick_by_the_ticker(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    errors = sample("cryptostats_upstream_errors_total", kind="server_error")
    limited = sample("cryptostats_upstream_errors_total", kind="rate_limited")
    ticks = sample("cryptostats_ticks_total")
    fake_gecko.enqueue(503, {"status": {"error_message": "down"}})
    fake_gecko.enqueue(429, {"status": {"error_code": 429}})
    ticking = settings.model_copy(
        update={
            "schedule": settings.schedule.model_copy(update={"tick_at_start": True})
        }
    )

    async with run_actors(ticking) as running:
        await wait_for(lambda: _changed("cryptostats_ticks_total", ticks))
        for kind, before in (("server_error", errors), ("rate_limited", limited)):
            await running.tick()
            await wait_for(
                lambda k=kind, b=before: _changed(
                    "cryptostats_upstream_errors_total", b, kind=k
                )
            )

    assert sample("cryptostats_ticks_total") == ticks + 1


async def _changed(name: str, before: float, **labels: str) -> bool:
    return sample(name, **labels) > before
