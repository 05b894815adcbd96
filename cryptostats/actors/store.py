"""Store: writes price events to MongoDB and answers queries about them.

Price events come from a durable JetStream consumer and are acknowledged
only after the write, so a crash before the write means a redelivery, and
the unique index makes the redelivery harmless. Queries arrive by
request/reply in a queue group, so Store replicas share them.
"""

from __future__ import annotations

import contextlib

import anyio
import pymongo
import structlog
from anyio.abc import TaskStatus
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.api import AckPolicy, ConsumerConfig
from nats.js.client import JetStreamContext
from pymongo.errors import PyMongoError

from cryptostats import metrics, subjects
from cryptostats.actors import ActorContext, subscription
from cryptostats.actors.publisher import ensure_price_stream
from cryptostats.actors.store_queries import answer_query
from cryptostats.config import ServiceSettings
from cryptostats.errors import LatestContendedError
from cryptostats.history_import import import_command
from cryptostats.messages import Quote, dumps, loads
from cryptostats.storage import QuoteStore, Saved, connect

log = structlog.get_logger("cryptostats.store", actor="store")

# Events written per batch: one history insert and one latest write each.
# 512 against 256: import 0.61 and 0.72 of a bare insert_many against 0.57
# and 0.48, alternating runs on one machine.
FETCH_BATCH = 512
# A write that takes longer says so (in_progress), so this only bounds how
# long the events of a killed Store wait before another one gets them.
ACK_WAIT_S = 10.0
RETRY_DELAY_S = 2.0
MAX_QUERY_CONCURRENCY = 64


class Store:
    """See the module docstring."""

    name = "store"

    def __init__(self, context: ActorContext) -> None:
        self._nats = context.nats
        self._settings = context.settings
        self._offers_import = context.offer_import

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        client = connect(self._settings.mongo.uri)
        try:
            store = QuoteStore(client[self._settings.mongo.database])
            await store.prepare()
            if self._offers_import:
                await self._offer_import(store)
            await self._serve(store, task_status)
        finally:
            with anyio.CancelScope(shield=True):
                await client.close()
            log.info("database_closed")

    async def _offer_import(self, store: QuoteStore) -> None:
        # A coin with no history leaves /deviation empty for hours: say how
        # to fill it now, beside this very process.
        data_dir = self._settings.service.data_dir
        default = ServiceSettings.model_fields["data_dir"].default
        where = None if data_dir == default else data_dir
        coins = self._settings.coins
        have = await store.latest_times(list(coins.ids), coins.vs_currency)
        for coin in coins.ids:
            if coin not in have:
                command = import_command(coin, where)
                log.info("history_missing", coin=coin, command=command)

    async def _serve(self, store: QuoteStore, task_status: TaskStatus[None]) -> None:
        js = self._nats.jetstream()
        await ensure_price_stream(js, self._settings.nats)
        events = await _durable_consumer(js)
        try:
            async with (
                subscription(
                    self._nats, subjects.QUERY_WILDCARD, subjects.STORE_QUEUE
                ) as queries,
                anyio.create_task_group() as group,
            ):
                task_status.started()
                group.start_soon(self._consume, events, store)
                limiter = anyio.CapacityLimiter(MAX_QUERY_CONCURRENCY)
                async for msg in queries.messages:
                    # Waiting for a free slot before starting the task keeps
                    # the queries waiting here in NATS's buffer, not as tasks.
                    async with limiter:
                        group.start_soon(self._answer, msg, store, limiter)
        finally:
            with anyio.CancelScope(shield=True):
                await events.unsubscribe()

    async def _consume(
        self, events: JetStreamContext.PullSubscription, store: QuoteStore
    ) -> None:
        while True:
            try:
                batch = await events.fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:
                # nats-py raises its own TimeoutError, or asyncio's when the
                # deadline passes between its two pull requests.
                continue
            try:
                await self._save_batch(batch, store)
            except anyio.get_cancelled_exc_class():
                await _hand_back(self._nats, batch)
                raise

    async def _save_batch(self, batch: list[Msg], store: QuoteStore) -> None:
        quotes, valid = await _parse_events(batch)
        added, newest, revised = await self._save_until_done(valid, quotes, store)

        # Acknowledged only now that every quote of the batch is written.
        for msg in valid:
            await msg.ack()
        metrics.QUOTES_STORED.labels(outcome="new").inc(added)
        metrics.QUOTES_STORED.labels(outcome="duplicate").inc(len(quotes) - added)
        log.debug("quotes_stored", quotes=len(quotes), added=added, coins=len(newest))
        for coin, quote in newest.items():
            await self._nats.publish(
                subjects.stored_subject(coin), dumps(quote.to_dict())
            )
        # `revised` leaves out the coins whose latest moved: their stored
        # notice says more.
        for coin in revised:
            await self._nats.publish(
                subjects.revised_subject(coin), dumps({"coin": coin})
            )

    async def _save_until_done(
        self, msgs: list[Msg], quotes: list[Quote], store: QuoteStore
    ) -> Saved:
        # Retrying in place, rather than nak-ing, keeps the batch whole and
        # in stream order while the database is away.
        while True:
            try:
                return await store.save_many(quotes)
            except (PyMongoError, LatestContendedError) as exc:
                log.warning(
                    "store_unavailable", quotes=len(quotes), error=type(exc).__name__
                )
                reason = {"error": type(exc).__name__}
                await self._nats.publish(subjects.STORE_UNAVAILABLE, dumps(reason))
            for msg in msgs:
                await msg.in_progress()
            await anyio.sleep(RETRY_DELAY_S)

    async def _answer(
        self, msg: Msg, store: QuoteStore, limiter: anyio.CapacityLimiter
    ) -> None:
        async with limiter:
            try:
                with pymongo.timeout(self._settings.mongo.query_timeout_s):
                    reply = await answer_query(
                        msg.subject, loads(msg.data), store, self._settings
                    )
            except ValueError as exc:
                reply = {"error": {"code": "bad_query", "message": str(exc)}}
            except PyMongoError as exc:
                log.warning("query_failed", error=type(exc).__name__)
                reply = {
                    "error": {
                        "code": "store_unavailable",
                        "message": "database unavailable",
                    }
                }
            except Exception:
                # A query must never take the Store, and its writes, down.
                log.exception("query_crashed", subject=msg.subject)
                reply = {"error": {"code": "internal_error", "message": "query failed"}}
            await msg.respond(dumps(reply))


async def _parse_events(batch: list[Msg]) -> tuple[list[Quote], list[Msg]]:
    """The quotes of a batch and their messages; malformed ones are dropped."""
    quotes: list[Quote] = []
    valid: list[Msg] = []
    for msg in batch:
        try:
            quotes.append(Quote.from_dict(loads(msg.data)))
        except ValueError as exc:
            log.warning("event_malformed", subject=msg.subject, error=str(exc))
            await msg.term()
            continue
        valid.append(msg)

    return quotes, valid


async def _durable_consumer(js: JetStreamContext) -> JetStreamContext.PullSubscription:
    config = ConsumerConfig(
        durable_name=subjects.STORE_CONSUMER,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ACK_WAIT_S,
        max_deliver=-1,
    )
    return await js.pull_subscribe(
        subjects.PRICE_WILDCARD,
        durable=subjects.STORE_CONSUMER,
        stream=subjects.PRICE_STREAM,
        config=config,
    )


async def _hand_back(nats: NatsClient, messages: list[Msg]) -> None:
    """Return unstored events to the stream at once, rather than after
    ACK_WAIT_S, when the Store stops. Acknowledged ones refuse quietly."""
    with anyio.CancelScope(shield=True):
        for msg in messages:
            if nats.is_closed:
                return
            with contextlib.suppress(NatsError):
                await msg.nak()
