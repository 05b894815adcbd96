"""HttpApi's read cache: answers kept until the Store announces a newer quote."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from nats.aio.client import Client as NatsClient

from cryptostats import subjects
from cryptostats.actors.read_cache import ReadCache, Versioned
from cryptostats.config import Settings
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.main import connect_nats
from cryptostats.messages import dumps, to_iso
from cryptostats.web.errors import ApiError
from tests.conftest import get_json, run_actors, wait_for

T1 = datetime(2024, 1, 1, tzinfo=UTC)
T2 = T1 + timedelta(minutes=15)


@pytest.fixture
async def client(nats_url: str) -> AsyncIterator[NatsClient]:
    nats = await connect_nats(nats_url)
    try:
        yield nats
    finally:
        await nats.drain()


class CountingLoader:
    """A Store stand-in at the loader seam: answers `answer`, counts calls."""

    def __init__(self, observed_at: datetime, answer: Any) -> None:
        self.observed_at = observed_at
        self.answer = answer
        self.calls = 0

    async def __call__(self) -> Versioned:
        self.calls += 1
        return to_iso(self.observed_at), self.answer


async def test_a_second_read_is_answered_from_memory(client: NatsClient) -> None:
    cache = ReadCache(client)
    load = CountingLoader(T1, {"price": 1.0})

    first = await cache.get("bitcoin", "stats", load)
    second = await cache.get("bitcoin", "stats", load)

    assert first == second == {"price": 1.0}
    assert load.calls == 1


async def test_a_stored_notice_makes_the_next_read_ask_again(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)
    load = CountingLoader(T1, {"price": 1.0})
    async with cache.following():
        await cache.get("bitcoin", "stats", load)
        load.observed_at, load.answer = T2, {"price": 2.0}

        await client.publish(
            subjects.stored_subject("bitcoin"), dumps({"observedAt": to_iso(T2)})
        )

        async def fresh() -> bool:
            return await cache.get("bitcoin", "stats", load) == {"price": 2.0}

        await wait_for(fresh, timeout_s=5)

    assert load.calls == 2


async def test_a_notice_of_another_coin_keeps_the_answer(client: NatsClient) -> None:
    cache = ReadCache(client)
    load = CountingLoader(T1, {"price": 1.0})
    await cache.get("bitcoin", "stats", load)

    cache.notice("ethereum", T2)
    await cache.get("bitcoin", "stats", load)

    assert load.calls == 1


async def test_an_answer_older_than_a_notice_during_its_load_is_not_kept(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)

    async def stale_load() -> Versioned:
        # The Store read before its write, and the notice of the write was
        # delivered before this reply.
        cache.notice("bitcoin", T2)
        return to_iso(T1), {"price": 1.0}

    fresh = CountingLoader(T2, {"price": 2.0})

    assert await cache.get("bitcoin", "stats", stale_load) == {"price": 1.0}
    assert await cache.get("bitcoin", "stats", fresh) == {"price": 2.0}
    assert fresh.calls == 1


async def test_a_notice_delivered_after_a_stale_answer_was_kept_drops_it(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)
    await cache.get("bitcoin", "stats", CountingLoader(T1, {"price": 1.0}))
    fresh = CountingLoader(T2, {"price": 2.0})

    cache.notice("bitcoin", T2)

    assert await cache.get("bitcoin", "stats", fresh) == {"price": 2.0}
    assert fresh.calls == 1


async def test_an_older_notice_keeps_a_newer_answer(client: NatsClient) -> None:
    cache = ReadCache(client)
    load = CountingLoader(T2, {"price": 2.0})
    await cache.get("bitcoin", "stats", load)

    cache.notice("bitcoin", T1)
    await cache.get("bitcoin", "stats", load)

    assert load.calls == 1


async def test_a_failed_load_is_not_remembered(client: NatsClient) -> None:
    cache = ReadCache(client)

    async def failing() -> Versioned:
        raise LookupError("no data")

    with pytest.raises(LookupError):
        await cache.get("bitcoin", "stats", failing)
    load = CountingLoader(T1, {"price": 1.0})

    assert await cache.get("bitcoin", "stats", load) == {"price": 1.0}
    assert load.calls == 1


class GatedLoader(CountingLoader):
    """A loader that answers only once `gate` is set."""

    def __init__(self, observed_at: datetime, answer: Any) -> None:
        super().__init__(observed_at, answer)
        self.gate = anyio.Event()

    async def __call__(self) -> Versioned:
        self.calls += 1
        await self.gate.wait()
        return to_iso(self.observed_at), self.answer


async def called(load: CountingLoader, times: int) -> bool:
    return load.calls >= times


async def gather(cache: ReadCache, load: Any, requests: int) -> list[Any]:
    answers: list[Any] = []

    async def one() -> None:
        try:
            answers.append(await cache.get("bitcoin", "stats", load))
        except ApiError as exc:
            answers.append(exc.code)

    async with anyio.create_task_group() as group:
        for _ in range(requests):
            group.start_soon(one)
        await wait_for(lambda: called(load, 1), timeout_s=5)
        await anyio.sleep(0.05)
        load.gate.set()
    return answers


async def test_requests_that_miss_together_share_one_load(client: NatsClient) -> None:
    cache = ReadCache(client)
    load = GatedLoader(T1, {"price": 1.0})

    answers = await gather(cache, load, 20)

    assert answers == [{"price": 1.0}] * 20
    assert (load.calls, cache.shared) == (1, 19)


async def test_an_error_of_a_shared_load_answers_every_waiting_request(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)

    class Unavailable(GatedLoader):
        async def __call__(self) -> Versioned:
            await super().__call__()
            raise ApiError(503, "store_timeout", "store did not answer")

    load = Unavailable(T1, None)

    answers = await gather(cache, load, 5)

    assert answers == ["store_timeout"] * 5
    assert load.calls == 1


async def test_after_a_notice_requests_do_not_wait_for_an_older_load(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)
    old = GatedLoader(T1, {"price": 1.0})
    fresh = CountingLoader(T2, {"price": 2.0})
    async with anyio.create_task_group() as group:
        group.start_soon(cache.get, "bitcoin", "stats", old)
        await wait_for(lambda: called(old, 1), timeout_s=5)

        cache.notice("bitcoin", T2)
        with anyio.fail_after(5):
            later = await cache.get("bitcoin", "stats", fresh)
        old.gate.set()

    assert later == {"price": 2.0}
    assert fresh.calls == 1
    assert await cache.get("bitcoin", "stats", fresh) == {"price": 2.0}


async def test_a_revised_notice_makes_the_next_read_ask_again(
    client: NatsClient,
) -> None:
    cache = ReadCache(client)
    load = CountingLoader(T2, {"deviation": 1.0})
    async with cache.following():
        await cache.get("bitcoin", ("deviation", 10), load)
        load.answer = {"deviation": 2.0}

        await client.publish(
            subjects.revised_subject("bitcoin"), dumps({"coin": "bitcoin"})
        )

        async def fresh() -> bool:
            answer = await cache.get("bitcoin", ("deviation", 10), load)
            return answer == {"deviation": 2.0}

        await wait_for(fresh, timeout_s=5)

    assert load.calls == 2


async def test_an_answer_loaded_across_a_drop_is_not_kept(client: NatsClient) -> None:
    cache = ReadCache(client)
    load = GatedLoader(T2, {"deviation": 1.0})
    async with anyio.create_task_group() as group:
        group.start_soon(cache.get, "bitcoin", "deviation", load)
        await wait_for(lambda: called(load, 1), timeout_s=5)
        cache.forget("bitcoin")
        load.gate.set()
    fresh = CountingLoader(T2, {"deviation": 2.0})

    assert await cache.get("bitcoin", "deviation", fresh) == {"deviation": 2.0}
    assert fresh.calls == 1


async def test_the_api_serves_each_newer_quote_once_it_is_stored(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    stats_url = "/stats?coin=bitcoin"
    deviation_url = "/deviation?coin=bitcoin&window=10"
    async with run_actors(settings) as running:
        seen: list[tuple[float, int]] = []
        for expected_count in (1, 2, 3):
            await running.tick()

            async def stored(count: int = expected_count) -> Any:
                _, deviation = await get_json(running.http_url + deviation_url)
                if deviation.get("count") != count:
                    return None
                _, stats = await get_json(running.http_url + stats_url)
                return stats["price"], deviation["count"]

            seen.append(await wait_for(stored, timeout_s=10))
            # Read again: memory must answer the same as the Store.
            _, again = await get_json(running.http_url + stats_url)
            assert again["price"] == seen[-1][0]

    assert seen == [(40000.0, 1), (45000.0, 2), (50000.0, 3)]
