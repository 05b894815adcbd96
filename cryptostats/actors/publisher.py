"""Publisher: turns quote batches into price events on a JetStream stream.

Each quote becomes one message on `cryptostats.price.<vs>.<coin>` whose
message id is the coin, currency and observed time, so the stream itself
drops a quote it already holds. The batch is acknowledged to the Fetcher
only after the stream acknowledged every quote.
"""

from __future__ import annotations

import asyncio

import structlog
from anyio.abc import TaskStatus
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.errors import NotFoundError

from cryptostats import subjects
from cryptostats.actors import ActorContext, subscription
from cryptostats.config import NatsSettings
from cryptostats.messages import decode_quotes, dumps

log = structlog.get_logger("cryptostats.publisher", actor="publisher")


async def ensure_price_stream(js: JetStreamContext, settings: NatsSettings) -> None:
    """Create the price stream, or bring an existing one to our settings."""
    config = StreamConfig(
        name=subjects.PRICE_STREAM,
        subjects=[subjects.PRICE_WILDCARD],
        storage=StorageType.FILE,
        discard=DiscardPolicy.OLD,
        max_age=settings.stream_max_age_s,
        duplicate_window=settings.duplicate_window_s,
    )
    try:
        await js.stream_info(subjects.PRICE_STREAM)
    except NotFoundError:
        await js.add_stream(config)
        return

    await js.update_stream(config)


class Publisher:
    """See the module docstring."""

    name = "publisher"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings.nats

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        js = self._nats.jetstream()
        await ensure_price_stream(js, self._settings)
        queue = subjects.PUBLISHER_QUEUE
        async with subscription(self._nats, subjects.QUOTES, queue) as sub:
            task_status.started()
            async for msg in sub.messages:
                await self._publish_batch(js, msg)

    async def _publish_batch(self, js: JetStreamContext, msg: Msg) -> None:
        try:
            quotes = decode_quotes(msg.data)
        except ValueError as exc:
            log.warning("batch_malformed", error=str(exc))
            await msg.respond(dumps({"ok": False, "error": str(exc)}))
            return

        try:
            # One connection writes in call order, so the stream keeps the
            # batch's order while the acknowledgements overlap.
            acks = await asyncio.gather(
                *(
                    js.publish(
                        subjects.price_subject(quote.coin, quote.vs_currency),
                        dumps(quote.to_dict()),
                        headers={"Nats-Msg-Id": quote.msg_id},
                        timeout=self._settings.request_timeout_s,
                    )
                    for quote in quotes
                )
            )
        except NatsError as exc:
            # No reply: the Fetcher retries the batch, and message ids keep
            # the quotes already published from being stored twice.
            log.warning("publish_failed", error=repr(exc), quotes=len(quotes))
            return

        duplicates = sum(bool(ack.duplicate) for ack in acks)
        log.info("quotes_published", quotes=len(quotes), duplicates=duplicates)
        await msg.respond(
            dumps({"ok": True, "published": len(quotes), "duplicates": duplicates})
        )
