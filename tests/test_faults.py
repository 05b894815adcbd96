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

import aiohttp
import anyio
import nats
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
    ServiceProcess,
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


async def stored(
    uri: str, database: str, coin: str
) -> tuple[list[float], float | None]:
    """The stored history of `coin` (oldest first) and its latest price."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        uri, tz_aware=True, serverSelectionTimeoutMS=3000
    )
    try:
        database_ = client[database]
        cursor = database_.quotes.find({"coin": coin}).sort("observed_at", 1)
        history = [document["price"] async for document in cursor]
        latest = await database_.latest.find_one({"_id": "usd"})
    finally:
        await client.close()

    entry = latest["coins"].get(coin) if latest else None
    return history, entry and entry["price"]


async def assert_every_quote_stored_once(
    fake: FakeCoinGecko, uri: str, database: str, timeout_s: float = 30.0
) -> None:
    """Wait until each coin's whole feed is stored, then check nothing is
    doubled: the history equals the feed exactly, and the latest price is its
    last."""
    for coin in COINS:
        everything = [point.price for point in fake.feeds[coin].points]

        async def complete(
            coin: str = coin, everything: list[float] = everything
        ) -> bool:
            return await stored(uri, database, coin) == (everything, everything[-1])

        try:
            await wait_for(complete, timeout_s=timeout_s, interval_s=0.3)
        except AssertionError:
            assert await stored(uri, database, coin) == (everything, everything[-1])


async def stats_price(http_url: str, coin: str) -> float | None:
    """The price `/stats` answers, or None while it answers no price."""
    try:
        status, body = await get_json(f"{http_url}/stats?coin={coin}")
    except aiohttp.ClientError:
        return None
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
            mongo={"query_timeout_s": 0.5},
        )
        async with run_actors(settings) as running:
            await wait_for(lambda: stats_price(running.http_url, "bitcoin"))
            await database.stop()
            await wait_for(lambda: _fetched_all(short_gecko))
            # HttpApi answers from memory until the Store's first failed
            # write tells it the database is gone.
            await wait_for(lambda: _stats_status_is(running.http_url, 503))

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
        assert body["error"]["code"] == "store_unavailable"
        assert "database" in body["error"]["message"]
    assert elapsed_s < 2 * settings.http.query_timeout_s
    assert price == 40500.0


async def _stats_status_is(http_url: str, expected: int) -> bool:
    status, _ = await get_json(f"{http_url}/stats?coin=bitcoin")
    return status == expected


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
    assert history == ([40000.0, 40100.0], 40100.0)


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

    assert history == ([40000.0, 40100.0], 40100.0)


async def test_a_quote_arriving_after_a_newer_one_takes_its_place_in_the_list(
    nats_url: str, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url, mongo_uri, short_gecko.base_url, service={"actors": ["store"]}
    )
    first, second, third = (
        _quote(point.price, point.observed_at)
        for point in short_gecko.feeds["bitcoin"].points[:3]
    )

    async with run_actors(settings) as running:
        js = running.client.jetstream()
        for quote in (first, third, second):
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
        price = await stats_price(running.http_url, "bitcoin")

    prices = [40000.0, 40100.0, 40200.0]
    assert history == (prices, prices[-1])
    assert price is None  # no HttpApi in this process


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


# The service as a process ------------------------------------------------


def write_config(tmp_path: Path, gecko_url: str, **sections: str) -> Path:
    """A config file for a service process on a fast schedule and short
    timeouts; `sections` adds TOML lines to a section."""
    values = {
        "service": f'data_dir = "{tmp_path / "data"}"',
        "schedule": 'cron = "*/1 * * * * *"',
        "coins": 'ids = ["bitcoin", "ethereum"]',
        "coingecko": (
            f'base_url = "{gecko_url}"\ntimeout_s = 40.0\nattempts = 1\n'
            "calls_per_minute = 600"
        ),
        "nats": "request_timeout_s = 2.0",
        "mongo": f'database = "faults_{os.getpid()}_{time.monotonic_ns()}"',
        "http": f"port = {embedded.free_port()}",
        "supervisor": "backoff_initial_s = 0.05\nbackoff_max_s = 0.2",
    }
    text = "\n".join(
        f"[{name}]\n{lines}\n{sections.get(name, '')}\n"
        for name, lines in values.items()
    )
    path = tmp_path / "config.toml"
    path.write_text(text)

    return path


def start_service(
    config: Path, env: dict[str, str] | None = None, name: str = "service"
) -> ServiceProcess:
    environment = {"PYTHONWARNINGS": "always::ResourceWarning", **(env or {})}
    return ServiceProcess(
        ["--config", str(config)], environment, config.parent / f"{name}.log"
    )


def http_url(config: Path) -> str:
    port = next(
        line.split("=")[1].strip()
        for line in config.read_text().splitlines()
        if line.startswith("port =")
    )
    return f"http://127.0.0.1:{port}"


def database_name(config: Path) -> str:
    return next(
        line.split("=")[1].strip().strip('"')
        for line in config.read_text().splitlines()
        if line.startswith("database =")
    )


def embedded_pid(service: ServiceProcess, server: str, nth: int = 0) -> int:
    ready = [
        e for e in service.events("embedded_server_ready") if e["server"] == server
    ]
    return int(ready[nth]["pid"])


def alive(pid: int) -> bool:
    """True while `pid` runs (a zombie waiting to be reaped is not running)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in {"Z", "X"}


async def gone(pid: int) -> bool:
    return not alive(pid)


async def logged(service: ServiceProcess, name: str, count: int = 1) -> bool:
    assert service.process.poll() is None, service.log()[-3000:]
    return len(service.events(name)) >= count


# 4 -------------------------------------------------------------------------


async def test_service_killed_between_publishing_and_storing_stores_all_once(
    tmp_path: Path, short_gecko: FakeCoinGecko
) -> None:
    database = embedded.embedded_mongo(tmp_path / "db")
    await database.start()
    config = write_config(tmp_path, short_gecko.base_url)
    env = {"MONGO_URI": embedded.mongo_uri(database)}
    first = start_service(config, env, "first")
    try:
        await wait_for(lambda: stats_price(http_url(config), "bitcoin"))
        await database.stop()
        await wait_for(lambda: _stream_holds(first, 12))
        first.process.kill()
        first.process.wait()
        nats_pid = embedded_pid(first, "nats")
        await wait_for(lambda: gone(nats_pid), timeout_s=5.0)

        await database.start()
        second = start_service(config, env, "second")
        try:
            await assert_every_quote_stored_once(
                short_gecko, env["MONGO_URI"], database_name(config)
            )
            price = await wait_for(lambda: stats_price(http_url(config), "bitcoin"))
        finally:
            code = second.stop()
    finally:
        first.process.kill()
        await database.stop()

    assert price == 40500.0
    assert code == 0


async def _stream_holds(service: ServiceProcess, count: int) -> bool:
    """True once the price stream of the service's embedded NATS holds
    `count` events."""
    ready = [
        e for e in service.events("embedded_server_ready") if e["server"] == "nats"
    ]
    client = await nats.connect(f"nats://127.0.0.1:{ready[-1]['port']}")
    try:
        info = await client.jetstream().stream_info(subjects.PRICE_STREAM)
    finally:
        await client.close()
    return info.state.messages >= count


# 5 -------------------------------------------------------------------------


async def test_sigterm_during_a_slow_upstream_call_exits_cleanly_within_5s(
    tmp_path: Path, short_gecko: FakeCoinGecko
) -> None:
    short_gecko.delay_s = 30.0
    config = write_config(tmp_path, short_gecko.base_url)
    service = start_service(config)
    try:
        await wait_for(lambda: _requests_at_least(short_gecko, 1))
        await wait_for(lambda: stats_status_is(http_url(config), 404))

        started = time.monotonic()
        code = service.stop(timeout_s=10.0)
        elapsed_s = time.monotonic() - started
    finally:
        service.process.kill()

    text = service.log()
    stopped = {e["server"] for e in service.events("embedded_server_stopped")}
    assert code == 0, text[-3000:]
    assert elapsed_s < 5.0
    assert service.events("nats_drained")
    assert service.events("database_closed")
    assert stopped == {"nats", "secantusdb"}
    for bad in ("Task was destroyed", "Unclosed", "Traceback", "ResourceWarning"):
        assert bad not in text


async def stats_status_is(url: str, status: int) -> bool:
    try:
        return (await get_json(f"{url}/stats?coin=bitcoin"))[0] == status
    except aiohttp.ClientError:
        return False


# 6 (as a process) ----------------------------------------------------------


async def test_an_actor_crashing_at_every_start_makes_the_process_exit_non_zero(
    tmp_path: Path, nats_url: str, mongo_uri: str, short_gecko: FakeCoinGecko
) -> None:
    # Another stream already takes the price subjects, so the Store fails
    # to set up its own as it starts, every time.
    client = await nats.connect(nats_url)
    try:
        await client.jetstream().add_stream(
            name="SQUATTER", subjects=[subjects.PRICE_WILDCARD]
        )
    finally:
        await client.close()
    config = write_config(
        tmp_path,
        short_gecko.base_url,
        service='actors = ["store"]',
        supervisor="restart_budget = 2",
    )
    service = start_service(config, {"NATS_URL": nats_url, "MONGO_URI": mongo_uri})

    try:
        code = service.process.wait(timeout=30)
    finally:
        service.process.kill()

    exceeded = service.events("actor_budget_exceeded")
    assert code == 1
    assert len(exceeded) == 1
    assert exceeded[0]["actor"] == "store"
    assert "BadRequestError" in exceeded[0]["cause"]
    assert len(service.events("actor_restarting")) == 2
    assert any(
        e["error_type"] == "ActorBudgetExceededError"
        for e in service.events("service_failed")
    )


# 9 -------------------------------------------------------------------------


@pytest.mark.parametrize("server", ["nats", "secantusdb"])
async def test_a_killed_embedded_server_is_restarted_and_storing_goes_on(
    tmp_path: Path, server: str
) -> None:
    fake = FakeCoinGecko.from_prices(
        {"bitcoin": ladder(40000.0, 12), "ethereum": ladder(2000.0, 12, 10.0)}
    )
    async with fake:
        config = write_config(tmp_path, fake.base_url)
        url = http_url(config)
        service = start_service(config)
        try:
            before = await wait_for(lambda: stats_price(url, "bitcoin"))
            pid = embedded_pid(service, server)
            os.kill(pid, signal.SIGKILL)
            await wait_for(lambda: _ready_again(service, server))
            after = await wait_for(lambda: _price_above(url, "bitcoin", before + 100))
            await wait_for(lambda: _fetched_all(fake), timeout_s=30.0)
            await wait_for(lambda: _price_above(url, "bitcoin", 41000.0))
            code = service.stop()
        finally:
            service.process.kill()

    history = await _stored_after(tmp_path / "data", database_name(config))
    assert embedded_pid(service, server, 1) != pid
    assert after > before
    assert code == 0
    prices = {coin: [p.price for p in fake.feeds[coin].points] for coin in COINS}
    assert history == {coin: (prices[coin], prices[coin][-1]) for coin in COINS}


async def _ready_again(service: ServiceProcess, server: str) -> bool:
    ready = [
        e for e in service.events("embedded_server_ready") if e["server"] == server
    ]
    return len(ready) >= 2


async def _price_above(url: str, coin: str, price: float) -> float | None:
    current = await stats_price(url, coin)
    return current if current is not None and current > price else None


async def _stored_after(data_dir: Path, database: str) -> dict[str, Any]:
    """What the service's embedded database holds, read by starting it again."""
    server = embedded.embedded_mongo(data_dir)
    await server.start()
    try:
        return {
            coin: await stored(embedded.mongo_uri(server), database, coin)
            for coin in COINS
        }
    finally:
        await server.stop()
