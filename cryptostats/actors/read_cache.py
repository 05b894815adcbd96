"""HttpApi's memory of answers, kept until the Store announces a newer quote.

Each answer is stored with the `observedAt` of the quote it was built from.
The Store publishes every new latest quote of a coin on its stored subject;
a notice drops the coin's answers older than the notified quote, and an
answer that comes back older than a quote already notified is never kept.
The two checks together make the order in which a notice and a Store reply
arrive irrelevant: once a notice has been delivered, or a reply has shown
a newer quote, no answer older than it is served again. Answers are also
dropped after the NATS connection reconnected, since notices may have been
missed while it was down, and whenever the Store says its database refused
a write.

A coin's answers are also dropped when the Store announces that quotes older
than its latest reached it (an import of past history), and an answer whose
load began before any drop is not kept.

Requests that miss while the same answer is being loaded wait for that one
load; a notice makes requests after it start a load of their own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import anyio
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg

from cryptostats import subjects
from cryptostats.actors import subscription
from cryptostats.messages import from_iso, loads
from cryptostats.web.errors import ApiError

log = structlog.get_logger("cryptostats.read_cache", actor="http_api")

# A loader returns the answer and the `observedAt` of the quote behind it.
Versioned = tuple[str, Any]
Loader = Callable[[], Awaitable[Versioned]]


class _Pending:
    """A load in flight, and its outcome once `done` is set."""

    def __init__(self) -> None:
        self.done = anyio.Event()
        self.answer: Any = None
        self.error: ApiError | None = None


class ReadCache:
    """Answers per (coin, key), valid until a newer quote of the coin is stored.

    Only a bounded set of keys exists per coin (one per route and window), so
    the cache needs no eviction beyond the drops described above.
    """

    def __init__(self, nats: NatsClient) -> None:
        self._nats = nats
        self._answers: dict[str, dict[Hashable, tuple[datetime, Any]]] = {}
        self._notified: dict[str, datetime] = {}
        self._pending: dict[str, dict[Hashable, _Pending]] = {}
        # Bumped by each drop of a coin's answers (and of all), so that a
        # load begun before a drop is not remembered after it.
        self._drops: dict[str, int] = {}
        self._drops_of_all = 0
        self._reconnects = 0
        self.hits = 0
        self.misses = 0
        self.shared = 0

    async def get(self, coin: str, key: Hashable, load: Loader) -> Any:
        """The answer for (coin, key): remembered, or loaded and remembered.

        Requests that miss while the same answer is being loaded wait for
        that load instead of asking the Store again: after each tick every
        answer of a coin is dropped at once, and without this every request
        in flight would become a query to the database.

        Raises:
            Whatever `load` raises; nothing is remembered then. Requests
            that waited for a load that raised ApiError raise it too.
        """
        answer = self.remembered(coin, key)
        if answer is not None:
            return answer
        if not self._nats.is_connected:
            # Notices cannot arrive now: answer only what the Store says.
            self.misses += 1
            return (await load())[1]

        pending = self._pending.get(coin, {}).get(key)
        if pending is not None:
            return await self._wait_for(pending, coin, key, load)

        pending = _Pending()
        self._pending.setdefault(coin, {})[key] = pending
        try:
            pending.answer = await self._load(coin, key, load)
            return pending.answer
        except ApiError as exc:
            pending.error = exc
            raise
        finally:
            loads = self._pending.get(coin, {})
            if loads.get(key) is pending:
                del loads[key]
            pending.done.set()

    async def _wait_for(
        self, pending: _Pending, coin: str, key: Hashable, load: Loader
    ) -> Any:
        await pending.done.wait()
        if pending.answer is not None:
            self.shared += 1
            return pending.answer
        if pending.error is not None:
            error = pending.error
            raise ApiError(error.status, error.code, error.message)
        # The load this request waited for ended without an answer.
        return await self._load(coin, key, load)

    async def _load(self, coin: str, key: Hashable, load: Loader) -> Any:
        self.misses += 1
        drops = self._drops_of_all, self._drops.get(coin, 0)
        observed_text, answer = await load()
        if not self._nats.is_connected:
            return answer
        if drops != (self._drops_of_all, self._drops.get(coin, 0)):
            # Dropped while loading: this answer may predate the reason.
            return answer

        observed_at = from_iso(observed_text)
        notified = self._notified.get(coin)
        if notified is None or observed_at >= notified:
            # A newer quote seen in a reply counts as a notice, so that no
            # route answers older than another one already did.
            self.notice(coin, observed_at)
            self._answers.setdefault(coin, {})[key] = (observed_at, answer)

        return answer

    def remembered(self, coin: str, key: Hashable) -> Any | None:
        """The remembered answer for (coin, key), or None.

        Plain code, not a coroutine: a request served from memory never
        waits, and `await`ing nothing costs more than the lookup itself.
        """
        self._forget_if_reconnected()
        if not self._nats.is_connected:
            self.forget()
            return None

        answers = self._answers.get(coin)
        remembered = answers.get(key) if answers else None
        if remembered is None:
            return None

        self.hits += 1
        return remembered[1]

    def notice(self, coin: str, observed_at: datetime) -> None:
        """Take note that `coin` has a stored quote observed at `observed_at`."""
        notified = self._notified.get(coin)
        if notified is None or observed_at > notified:
            self._notified[coin] = observed_at
            # Requests from now on must not wait for a load begun earlier.
            self._pending.pop(coin, None)

        answers = self._answers.get(coin)
        if answers:
            stale = [key for key, (seen, _) in answers.items() if seen < observed_at]
            for key in stale:
                del answers[key]

    @asynccontextmanager
    async def following(self) -> AsyncIterator[None]:
        """Listen to the Store's notices for the length of a block.

        The subscription goes out on the connection before any query made
        inside the block, and NATS keeps one connection's order, so no
        notice of a write that a reply did not see can be missed.
        """
        wildcard = f"{subjects.STORED_PREFIX}.*"
        async with (
            subscription(self._nats, wildcard) as sub,
            subscription(self._nats, f"{subjects.REVISED_PREFIX}.*") as revised,
            subscription(self._nats, subjects.STORE_UNAVAILABLE) as trouble,
            anyio.create_task_group() as group,
        ):
            group.start_soon(self._listen, sub.messages)
            group.start_soon(self._forget_revised, revised.messages)
            group.start_soon(self._forget_on_trouble, trouble.messages)
            try:
                yield
            finally:
                group.cancel_scope.cancel()

    async def _listen(self, messages: AsyncIterator[Msg]) -> None:
        async for msg in messages:
            coin = msg.subject.rpartition(".")[2]
            try:
                observed_at = from_iso(loads(msg.data)["observedAt"])
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("stored_notice_malformed", coin=coin, error=str(exc))
                self.forget(coin)
                continue
            self.notice(coin, observed_at)

    async def _forget_revised(self, messages: AsyncIterator[Msg]) -> None:
        # Older quotes of a coin were stored: its latest is the same, but
        # answers built from recent prices (/deviation) may have changed.
        async for msg in messages:
            self.forget(msg.subject.rpartition(".")[2])

    async def _forget_on_trouble(self, messages: AsyncIterator[Msg]) -> None:
        # While the database refuses writes, newer quotes wait in the stream:
        # answer from the Store (a 503 while it is down), not from memory.
        async for _ in messages:
            if self._answers:
                log.info("read_cache_cleared", reason="store unavailable")
            self.forget()

    def forget(self, coin: str | None = None) -> None:
        """Drop the answers of `coin`, or of every coin."""
        if coin is None:
            self._answers.clear()
            self._pending.clear()
            self._drops_of_all += 1
        else:
            self._answers.pop(coin, None)
            self._pending.pop(coin, None)
            self._drops[coin] = self._drops.get(coin, 0) + 1

    def _forget_if_reconnected(self) -> None:
        reconnects = self._reconnect_count()
        if reconnects != self._reconnects:
            self._reconnects = reconnects
            self.forget()
            log.info("read_cache_cleared", reason="nats reconnected")

    def _reconnect_count(self) -> int:
        return int(self._nats.stats.get("reconnects", 0))
