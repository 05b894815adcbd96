"""Faults against the real servers: NATS killed and paused, the database
stopped, CoinGecko down, actors crashing. Every quote CoinGecko gave is
stored exactly once, and the service answers again afterwards."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus
from pymongo import AsyncMongoClient

from cryptostats import embedded, subjects
from cryptostats.actors import ActorContext, subscription
from cryptostats.config import Settings
from cryptostats.errors import ActorBudgetExceededError
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.main import connect_nats
from cryptostats.messages import Quote, dumps
from cryptostats.supervisor import Supervisor
from tests.conftest import (
    get_json,
    make_settings,
    run_actors,
    wait_for,
)

COINS = ("bitcoin", "ethereum")
FAST = {"cron": "*/1 * * * * *", "tick_at_start": True}


def ladder(first: float, count: int, step: float = 100.0) -> list[float]:
    return [first + i * step for i in range(count)]


@pytest.fixture
async def short_gecko() -> AsyncIterator[FakeCoinGecko]:
    """A fake CoinGecko with six distinct quotes per coin, then repeats."""
    fake = FakeCoinGecko.from_prices(
        {"bitcoin": ladder(40000.0, 6), "ethereum": ladder(2000.0, 6, 10.0)}
    )
    async with fake:
        yield fake


def served(fake: FakeCoinGecko, coin: str) -> list[float]:
    """The distinct prices of `coin` the fake has answered so far."""
    feed = fake.feeds[coin]
    count = feed.position + int(feed.exhausted)
    return [point.price for point in feed.points[:count]]


async def stored(uri: str, database: str, coin: str) -> tuple[list[float], list[float]]:
    """The stored history of `coin` (oldest first) and its recent-price list."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=3000
    )
    try:
        database_ = client[database]
        cursor = database_.quotes.find({"coin": coin}).sort("observed_at", 1)
        history = [document["price"] async for document in cursor]
        latest = await database_.latest.find_one({"_id": coin})
    finally:
        await client.close()

    return history, list(latest["prices"]) if latest else []


async def assert_every_quote_stored_once(
    fake: FakeCoinGecko, uri: str, database: str, timeout_s: float = 30.0
) -> None:
    """Wait until each coin's whole feed is stored, then check nothing is
    doubled: the history and the recent-price list equal the feed exactly."""
    for coin in COINS:
        everything = [point.price for point in fake.feeds[coin].points]

        async def complete(
            coin: str = coin, everything: list[float] = everything
        ) -> bool:
            return await stored(uri, database, coin) == (everything, everything)

        try:
            await wait_for(complete, timeout_s=timeout_s, interval_s=0.3)
        except AssertionError:
            assert await stored(uri, database, coin) == (everything, everything)


async def stats_price(http_url: str, coin: str) -> float | None:
    status, body = await get_json(f"{http_url}/stats?coin={coin}")
    return body["price"] if status == 200 else None


async def kill_and_restart(server: embedded.EmbeddedServer, down_s: float) -> None:
    """SIGKILL the server's process, wait `down_s`, start it on the same port."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)
    await server.stop()  # reaps the dead child
    await anyio.sleep(down_s)
    await server.start()


# 1 -------------------------------------------------------------------------


async def test_nats_killed_and_restarted_loses_and_doubles_no_quote(
    nats_server: embedded.EmbeddedServer, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        embedded.nats_url(nats_server), mongo_uri, short_gecko.base_url, schedule=FAST
    )
    short_gecko.delay_s = 0.4  # so that a fetch is in flight when NATS dies

    async with run_actors(settings) as running:
        await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
        await kill_and_restart(nats_server, down_s=1.5)

        await assert_every_quote_stored_once(
            short_gecko, settings.mongo.uri, settings.mongo.database
        )
        price = await wait_for(lambda: stats_price(running.http_url, "bitcoin"))

    assert price == 40500.0


# 2 -------------------------------------------------------------------------


async def test_nats_paused_across_a_tick_loses_and_doubles_no_quote(
    nats_server: embedded.EmbeddedServer, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        embedded.nats_url(nats_server), mongo_uri, short_gecko.base_url, schedule=FAST
    )
    assert nats_server.pid is not None

    async with run_actors(settings) as running:
        await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
        os.kill(nats_server.pid, signal.SIGSTOP)
        try:
            await anyio.sleep(3.0)
        finally:
            os.kill(nats_server.pid, signal.SIGCONT)

        await assert_every_quote_stored_once(
            short_gecko, settings.mongo.uri, settings.mongo.database
        )
        price = await wait_for(lambda: stats_price(running.http_url, "bitcoin"))

    assert price == 40500.0


# 3 -------------------------------------------------------------------------


async def test_database_outage_keeps_events_in_the_stream_and_api_answers_503(
    tmp_path: Path, nats_url: str, short_gecko: FakeCoinGecko
) -> None:
    database = embedded.embedded_mongo(tmp_path / "db")
    await database.start()
    try:
        settings = make_settings(
            nats_url,
            embedded.mongo_uri(database),
            short_gecko.base_url,
            schedule=FAST,
            http={"query_timeout_s": 1.0},
            mongo={"query_timeout_s": 0.5},
        )
        async with run_actors(settings) as running:
            await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
            await database.stop()
            await wait_for(lambda: _fetched_all(short_gecko))

            started = time.monotonic()
            answers = [
                await get_json(f"{running.http_url}/{path}?coin=bitcoin")
                for path in ("stats", "deviation")
            ]
            elapsed_s = time.monotonic() - started

            await database.start()
            await assert_every_quote_stored_once(
                short_gecko, settings.mongo.uri, settings.mongo.database
            )
            price = await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
    finally:
        await database.stop()

    for status, body in answers:
        assert status == 503
        assert body["error"]["code"] in {"store_unavailable", "store_timeout"}
        assert "database" in body["error"]["message"]
    assert elapsed_s < 2 * 1.0
    assert price == 40500.0


async def _fetched_all(fake: FakeCoinGecko) -> bool:
    return all(fake.feeds[coin].exhausted for coin in COINS)


# 7 -------------------------------------------------------------------------


async def test_coingecko_down_for_a_tick_skips_it_and_the_next_stores(
    nats_url: str, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(nats_url, mongo_uri, short_gecko.base_url)

    async with run_actors(settings) as running:
        await running.tick()
        await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
        short_gecko.enqueue(503, {"status": {"error_message": "down"}})
        await running.tick()
        await wait_for(lambda: _requests_at_least(short_gecko, 2))
        await running.tick()
        second = await wait_for(lambda: _price_is(running.http_url, "bitcoin", 40100.0))
        history = await stored(settings.mongo.uri, settings.mongo.database, "bitcoin")

    assert second
    assert history == ([40000.0, 40100.0], [40000.0, 40100.0])


async def _requests_at_least(fake: FakeCoinGecko, count: int) -> bool:
    return len(fake.requests) >= count


async def _price_is(http_url: str, coin: str, price: float) -> bool:
    return await stats_price(http_url, coin) == price


# 8 -------------------------------------------------------------------------


async def test_a_redelivered_quote_changes_neither_history_nor_latest(
    nats_url: str, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url, mongo_uri, short_gecko.base_url, service={"actors": ["store"]}
    )
    first, second = (
        _quote(point.price, point.observed_at)
        for point in short_gecko.feeds["bitcoin"].points[:2]
    )

    async with run_actors(settings) as running:
        js = running.client.jetstream()
        # No message id: the stream keeps both copies, as after a lost ack.
        for quote in (first, second, first, second):
            await js.publish(
                subjects.price_subject("bitcoin", "usd"), dumps(quote.to_dict())
            )

        async def consumed() -> bool:
            info = await js.consumer_info(
                subjects.PRICE_STREAM, subjects.STORE_CONSUMER
            )
            return info.num_ack_pending == 0 and info.num_pending == 0

        await wait_for(consumed)
        history = await stored(settings.mongo.uri, settings.mongo.database, "bitcoin")

    assert history == ([40000.0, 40100.0], [40000.0, 40100.0])


def _quote(price: float, observed_at: Any) -> Quote:
    return Quote(
        coin="bitcoin",
        vs_currency="usd",
        price=price,
        market_cap=price * 19e6,
        change_24h=None,
        observed_at=observed_at,
        fetched_at=observed_at,
    )


# 6 -------------------------------------------------------------------------


class Exploder:
    """A test actor that raises on every message it receives."""

    name = "exploder"

    def __init__(self, context: ActorContext, subject: str) -> None:
        self._nats = context.nats
        self._subject = subject
        self.received = 0

    async def run(self, *, task_status: TaskStatus[None]) -> None:
        async with subscription(self._nats, self._subject) as sub:
            task_status.started()
            async for _ in sub.messages:
                self.received += 1
                raise RuntimeError("boom on every message")


async def test_an_actor_that_always_raises_spends_its_budget_and_stops_all(
    settings: Settings,
) -> None:
    subject = f"test.exploder.{os.getpid()}.{time.monotonic_ns()}"
    budget = settings.supervisor.model_copy(update={"restart_budget": 2})
    client = await connect_nats(settings.nats.url)
    actor = Exploder(ActorContext(client, settings), subject)
    supervisor = Supervisor([actor], budget)

    errors: tuple[BaseException, ...] = ()

    try:
        async with anyio.create_task_group() as group:
            await group.start(supervisor.run)
            group.start_soon(_publish_until_stopped, client, subject)
    except* ActorBudgetExceededError as raised:
        errors = tuple(_leaves(raised))
    finally:
        await client.drain()

    assert len(errors) == 1
    error = errors[0]
    assert isinstance(error, ActorBudgetExceededError)
    assert error.actor == "exploder"
    assert "boom on every message" in str(error)
    assert actor.received == 3
    assert supervisor.states() == {"exploder": "failed"}
    assert supervisor.restarts() == {"exploder": 2}


async def _publish_until_stopped(client: Any, subject: str) -> None:
    while True:
        await client.publish(subject, b"{}")
        await anyio.sleep(0.02)


def _leaves(error: BaseException) -> list[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        return [leaf for inner in error.exceptions for leaf in _leaves(inner)]
    return [error]
