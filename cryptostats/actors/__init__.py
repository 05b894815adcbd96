"""The five actors. Each talks to the others only through NATS subjects."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
from nats.aio.client import Client as NatsClient
from nats.aio.subscription import Subscription

from cryptostats.config import Settings


@dataclass(frozen=True)
class ActorContext:
    """What every actor is handed: the process's NATS connection and settings.

    `states` reports every actor of this process (for health checks);
    `offer_import` has the Store say how to fill a coin's missing history
    (not when the process is that import).
    """

    nats: NatsClient
    settings: Settings
    states: Callable[[], dict[str, str]] = field(default=dict)
    offer_import: bool = True


@asynccontextmanager
async def subscription(
    nats: NatsClient, subject: str, queue: str = ""
) -> AsyncIterator[Subscription]:
    """Subscribe for the length of a block; unsubscribe even when cancelled."""
    sub = await nats.subscribe(subject, queue=queue)
    try:
        yield sub
    finally:
        with anyio.CancelScope(shield=True):
            if not nats.is_closed:
                await sub.unsubscribe()
