"""The supervisor: starts actors, restarts crashed ones, stops them in reverse.

An actor is restarted with exponential backoff; more crashes than the restart
budget within the budget window stop the whole process with an error naming
the actor and the cause, so that a half-alive service never goes unnoticed.
A configuration error stops the process at once: no restart can fix it.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio
import structlog
from anyio.abc import TaskStatus

from cryptostats import metrics
from cryptostats.config import SupervisorSettings
from cryptostats.errors import ActorBudgetExceededError, ConfigError

log = structlog.get_logger("cryptostats.supervisor")


class Actor(Protocol):
    """One long-lived part of the process, with its own NATS subjects."""

    name: str

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        """Subscribe, report ready through `task_status`, then serve until
        cancelled. Resources opened here are closed here."""


class ActorState(enum.StrEnum):
    STARTING = "starting"
    READY = "ready"
    RESTARTING = "restarting"
    FAILED = "failed"
    STOPPED = "stopped"


class _ReadySignal(TaskStatus[None]):
    """The `task_status` handed to an actor: calls back once it is ready."""

    def __init__(self, on_ready: Callable[[], None]) -> None:
        self._on_ready = on_ready

    def started(self, value: Any = None) -> None:
        self._on_ready()


@dataclass
class _Slot:
    actor: Actor
    state: ActorState = ActorState.STARTING
    restarts: int = 0
    crashes: deque[float] = field(default_factory=deque)
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)


class Supervisor:
    """Runs actors in one task group; see the module docstring."""

    def __init__(self, actors: list[Actor], settings: SupervisorSettings) -> None:
        self._slots = [_Slot(actor) for actor in actors]
        self._settings = settings

    def states(self) -> dict[str, str]:
        """Each actor's current state, for health checks."""
        return {slot.actor.name: slot.state.value for slot in self._slots}

    def restarts(self) -> dict[str, int]:
        """How often each actor has been restarted since the process began."""
        return {slot.actor.name: slot.restarts for slot in self._slots}

    async def run(
        self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start every actor in order and keep it running until `stop()`.

        Reports started once every actor is ready.

        Raises:
            ActorBudgetExceededError: an actor spent its restart budget.
        """
        async with anyio.create_task_group() as group:
            for slot in self._slots:
                await group.start(self._keep_running, slot)
            log.info("supervisor_ready", actors=[s.actor.name for s in self._slots])
            task_status.started()

    async def stop(self) -> None:
        """Stop actors one at a time, last started first, and wait for each."""
        for slot in reversed(self._slots):
            slot.scope.cancel()
            await slot.done.wait()

    async def _keep_running(
        self, slot: _Slot, *, task_status: TaskStatus[None]
    ) -> None:
        first_start = task_status

        def on_ready() -> None:
            nonlocal first_start
            slot.state = ActorState.READY
            log.info("actor_ready", actor=slot.actor.name, restarts=slot.restarts)
            first_start.started()
            first_start = anyio.TASK_STATUS_IGNORED

        try:
            with slot.scope:
                await self._restart_loop(slot, _ReadySignal(on_ready))
        finally:
            if slot.state is not ActorState.FAILED:
                slot.state = ActorState.STOPPED
            log.info("actor_stopped", actor=slot.actor.name, state=slot.state.value)
            slot.done.set()

    async def _restart_loop(self, slot: _Slot, ready: _ReadySignal) -> None:
        while True:
            try:
                await slot.actor.run(task_status=ready)
                return
            except Exception as exc:
                fatal = _config_error(exc)
                if fatal is not None:
                    slot.state = ActorState.FAILED
                    log.error(
                        "actor_misconfigured", actor=slot.actor.name, error=str(fatal)
                    )
                    if fatal is exc:
                        raise
                    raise fatal from exc
                log.exception("actor_crashed", actor=slot.actor.name)
                await self._before_restart(slot, exc)

    async def _before_restart(self, slot: _Slot, exc: Exception) -> None:
        now = time.monotonic()
        slot.crashes.append(now)
        while now - slot.crashes[0] > self._settings.budget_window_s:
            slot.crashes.popleft()

        if len(slot.crashes) > self._settings.restart_budget:
            slot.state = ActorState.FAILED
            log.error(
                "actor_budget_exceeded",
                actor=slot.actor.name,
                crashes=len(slot.crashes),
                window_s=self._settings.budget_window_s,
                cause=repr(exc),
            )
            raise ActorBudgetExceededError(slot.actor.name, len(slot.crashes), exc)

        delay_s = min(
            self._settings.backoff_initial_s * 2 ** (len(slot.crashes) - 1),
            self._settings.backoff_max_s,
        )
        slot.state = ActorState.RESTARTING
        slot.restarts += 1
        metrics.ACTOR_RESTARTS.labels(actor=slot.actor.name).inc()
        log.warning(
            "actor_restarting",
            actor=slot.actor.name,
            delay_s=delay_s,
            restarts=slot.restarts,
            cause=repr(exc),
        )
        await anyio.sleep(delay_s)


def _config_error(exc: BaseException) -> ConfigError | None:
    """The configuration error in `exc`, if any: restarting cannot fix it."""
    if isinstance(exc, ConfigError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _config_error(inner)
            if found is not None:
                return found

    return None
