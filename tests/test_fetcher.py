"""The Fetcher among the running actors: what bad CoinGecko answers leave
stored (nothing), rate limits against the schedule, aliases, rejected keys."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from structlog.testing import capture_logs

from cryptostats.config import Settings
from cryptostats.errors import ApiKeyRejectedError
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.main import EXIT_CONFIG, _leaves
from tests.conftest import (
    Running,
    ServiceProcess,
    get_json,
    make_settings,
    run_actors,
    wait_for,
)
from tests.test_coingecko import (
    CLOUDFLARE_PAGE,
    KEY,
    PRO_KEY_ON_PUBLIC_HOST_BODY,
    RATE_LIMIT_BODY,
    UNAUTHORIZED_BODY,
)

OBSERVED_AT = 1764780000  # 2025-12-03T16:40:00Z


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    with capture_logs() as logs:
        yield logs


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in list(logs) if entry["event"] == name]


async def stored(settings: Settings) -> tuple[int, int]:
    """How many quotes and `latest` documents the test's database holds."""
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(settings.mongo.uri)
    try:
        database = client[settings.mongo.database]
        quotes = await database.quotes.count_documents({})
        latest = await database.latest.count_documents({})
    finally:
        await client.close()

    return quotes, latest


async def tick_and_wait(running: Running, logs: list[dict[str, Any]]) -> dict[str, Any]:
    """Tick once; the Fetcher's summary line of that tick."""
    before = len(events(logs, "quotes_fetched"))
    await running.tick()

    async def summarized() -> list[dict[str, Any]]:
        lines = events(logs, "quotes_fetched")
        return lines[before:]

    return (await wait_for(summarized))[0]


async def test_bad_answers_store_nothing_and_a_good_one_after_them_is_stored(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    fake_gecko.enqueue(200, CLOUDFLARE_PAGE, content_type="text/html")
    fake_gecko.enqueue(403, CLOUDFLARE_PAGE, content_type="text/html")
    fake_gecko.enqueue(200, '{"bitcoin":{"usd":NaN},"ethereum":{"usd":-1}}')
    fake_gecko.enqueue(200, {"bitcoin": {"usd": 0}, "ethereum": {}})
    fake_gecko.enqueue(200, {"bitcoin": {"usd": "64000.1"}})

    with captured() as logs:
        async with run_actors(settings) as running:
            bad = [await tick_and_wait(running, logs) for _ in range(5)]
            await running.client.flush()
            await asyncio.sleep(0.3)
            after_bad = await stored(settings)
            good = await tick_and_wait(running, logs)
            await wait_for(lambda: _stored_at_least(settings, 2))

    assert after_bad == (0, 0)
    assert [line["failed"] for line in bad] == [2, 2, 0, 0, 0]
    assert [line["rejected"] for line in bad] == [0, 0, 2, 1, 1]
    assert [line["missing"] for line in bad] == [0, 0, 0, 1, 1]
    assert all(line["received"] == 0 for line in bad)
    assert good["received"] == 2 and good["asked"] == 2
    assert {"attempts", "elapsed_ms", "skipped"} <= set(good)
    assert [e["status"] for e in events(logs, "fetch_failed")] == [200, 403]


async def _stored_at_least(settings: Settings, count: int) -> bool:
    return (await stored(settings))[0] >= count


async def test_a_rate_limit_running_into_the_next_tick_skips_ticks_and_stores_nothing(
    nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        coingecko={"attempts": 3},
        schedule={"cron": "* * * * * *"},
    )
    fake_gecko.enqueue(429, RATE_LIMIT_BODY, headers={"retry-after": "119"})

    with captured() as logs:
        async with run_actors(settings):

            async def deferred_twice() -> bool:
                return len(events(logs, "fetch_deferred")) >= 3

            await wait_for(deferred_twice, timeout_s=10)
            counts = await stored(settings)

    deferrals = events(logs, "fetch_deferred")
    assert len(fake_gecko.requests) == 1
    assert counts == (0, 0)
    assert [d["wait_s"] > 100 for d in deferrals] == [True] * len(deferrals)
    assert deferrals[0]["wait_s"] > deferrals[-1]["wait_s"]
    assert events(logs, "rate_limited")[0]["retry_after_s"] == 119


async def test_null_and_absent_market_cap_and_change_are_served_as_null(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    fake_gecko.enqueue(
        200,
        {
            "bitcoin": {
                "usd": 64000.1,
                "usd_market_cap": None,
                "usd_24h_change": None,
                "last_updated_at": OBSERVED_AT,
            }
        },
    )
    fake_gecko.enqueue(200, {"bitcoin": {"usd": 64000.2}})

    with captured() as logs:
        async with run_actors(settings) as running:
            answers = []
            for price in (64000.1, 64000.2):
                await tick_and_wait(running, logs)

                async def served(price: float = price) -> Any:
                    status, body = await get_json(
                        f"{running.http_url}/stats?coin=bitcoin"
                    )
                    return body if status == 200 and body["price"] == price else None

                answers.append(await wait_for(served))

    for body in answers:
        assert body["marketCap"] is None
        assert body["24hChange"] is None


async def test_an_unchanged_last_updated_at_is_handed_on_once(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    answer = {"bitcoin": {"usd": 64000.1, "last_updated_at": OBSERVED_AT}}
    fake_gecko.enqueue(200, answer)
    fake_gecko.enqueue(200, answer)

    with captured() as logs:
        async with run_actors(settings) as running:
            lines = [await tick_and_wait(running, logs) for _ in range(2)]
            await wait_for(lambda: _stored_at_least(settings, 1))
            await asyncio.sleep(0.3)
            counts = await stored(settings)

    assert counts == (1, 1)
    assert [(line["received"], line["unchanged"]) for line in lines] == [
        (1, 0),
        (1, 1),
    ]


async def test_a_former_coin_id_answers_for_the_current_one(
    nats_url: str, mongo_uri: str
) -> None:
    fake = FakeCoinGecko.from_prices({"polygon-ecosystem-token": [0.21, 0.23]})
    async with fake:
        settings = make_settings(
            nats_url, mongo_uri, fake.base_url, coins={"ids": ["matic-network"]}
        )
        with captured() as logs:
            async with run_actors(settings) as running:
                for _ in range(2):
                    await tick_and_wait(running, logs)

                async def both_stored() -> Any:
                    url = f"{running.http_url}/deviation?coin=matic-network"
                    status, body = await get_json(url)
                    return body if status == 200 and body["count"] == 2 else None

                deviation = await wait_for(both_stored)
                _, stats = await get_json(
                    f"{running.http_url}/stats?coin=matic-network"
                )
                _, current = await get_json(
                    f"{running.http_url}/stats?coin=polygon-ecosystem-token"
                )

    assert fake.requests[0].query["ids"] == ["polygon-ecosystem-token"]
    assert deviation["coin"] == "polygon-ecosystem-token"
    assert deviation["deviation"] == pytest.approx(0.01)
    assert stats["coin"] == "polygon-ecosystem-token" and stats["price"] == 0.23
    assert current == stats


async def test_a_key_for_the_wrong_host_stops_the_actors_with_a_clear_error(
    nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        coingecko={"plan": "demo", "api_key": KEY},
    )
    fake_gecko.enqueue(400, PRO_KEY_ON_PUBLIC_HOST_BODY)

    with captured() as logs, pytest.raises(BaseException) as caught:
        async with run_actors(settings):
            await asyncio.sleep(5)

    [error] = [e for e in _leaves(caught.value) if isinstance(e, ApiKeyRejectedError)]
    assert "plan = 'pro'" in str(error)
    assert [r.path for r in fake_gecko.requests] == ["/api/v3/ping"]
    assert events(logs, "actor_misconfigured")[0]["actor"] == "fetcher"
    assert not events(logs, "actor_restarting")
    assert KEY not in repr(logs)


async def test_the_service_exits_with_the_config_code_when_the_key_is_rejected(
    nats_url: str, fake_gecko: FakeCoinGecko, tmp_path: Path
) -> None:
    fake_gecko.enqueue(400, PRO_KEY_ON_PUBLIC_HOST_BODY)
    env = {
        "NATS_URL": nats_url,
        "COINGECKO_PLAN": "demo",
        "COINGECKO_API_KEY": KEY,
        "COINGECKO_BASE_URL": fake_gecko.base_url,
    }
    service = ServiceProcess(
        ["--actors", "fetcher", "--data-dir", str(tmp_path)], env, tmp_path / "log"
    )
    try:
        code = await asyncio.to_thread(service.process.wait, 30)
    finally:
        service.stop()

    log = service.log()
    assert code == EXIT_CONFIG
    assert "ApiKeyRejectedError" in log and "pro-api.coingecko.com" in log
    assert KEY not in log


async def test_a_key_rejected_on_a_tick_stops_the_actors_too(
    nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        coingecko={"plan": "pro", "api_key": KEY},
    )

    with captured(), pytest.raises(BaseException) as caught:
        async with run_actors(settings) as running:
            fake_gecko.enqueue(401, UNAUTHORIZED_BODY)
            await running.tick()
            await asyncio.sleep(5)

    leaves = _leaves(caught.value)
    assert any(isinstance(error, ApiKeyRejectedError) for error in leaves)
    assert [r.path for r in fake_gecko.requests] == [
        "/api/v3/ping",
        "/api/v3/simple/price",
    ]
