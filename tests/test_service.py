"""The actors together, in-process, against real NATS and SecantusDB."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest
from pymongo import AsyncMongoClient

from cryptostats import subjects
from cryptostats.config import Settings
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.messages import Quote, dumps, loads
from tests.conftest import Running, get_json, make_settings, run_actors, wait_for


async def tick_until_stored(running: Running, coin: str, count: int) -> None:
    """Tick once per stored quote until `coin` has `count` recent prices."""
    url = f"{running.http_url}/deviation?coin={coin}&window=1000"
    for _ in range(count):
        before = (await get_json(url))[1].get("count", 0)
        await running.tick()

        async def grew(before: int = before) -> bool:
            status, body = await get_json(url)
            return status == 200 and body["count"] > before

        await wait_for(grew)


async def test_deviation_of_three_prices_is_population_std(settings: Settings) -> None:
    async with run_actors(settings) as running:
        await tick_until_stored(running, "bitcoin", 3)

        status, body = await get_json(f"{running.http_url}/deviation?coin=bitcoin")

    assert status == 200
    assert body == {
        "coin": "bitcoin",
        "deviation": pytest.approx(4082.4829046386, abs=1e-9),
        "window": 10,
        "count": 3,
    }
    assert str(body["deviation"]).startswith("4082.4829")


async def test_the_tick_at_start_is_not_lost_while_the_fetcher_starts(
    nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    # The Ticker starts, and ticks, before the Fetcher subscribes.
    settings = make_settings(
        nats_url, mongo_uri, fake_gecko.base_url, schedule={"tick_at_start": True}
    )
    async with run_actors(settings) as running:

        async def stored() -> bool:
            status, _ = await get_json(f"{running.http_url}/stats?coin=bitcoin")
            return status == 200

        await wait_for(stored, timeout_s=10)

    assert len(fake_gecko.requests) == 1


async def test_stats_answers_the_latest_quote_with_the_original_field_names(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    async with run_actors(settings) as running:
        await tick_until_stored(running, "bitcoin", 2)

        status, body = await get_json(f"{running.http_url}/stats?coin=bitcoin")

    point = fake_gecko.feeds["bitcoin"].points[1]
    assert status == 200
    assert body == {
        "coin": "bitcoin",
        "price": 45000.0,
        "marketCap": point.market_cap,
        "24hChange": point.change_24h,
        "observedAt": point.observed_at.isoformat(timespec="milliseconds").replace(
            "+00:00", "Z"
        ),
    }
    assert math.isclose(body["24hChange"], 12.5)


async def test_a_quote_seen_again_is_stored_once(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    async with run_actors(settings) as running:
        await tick_until_stored(running, "bitcoin", 3)
        # The feed is exhausted: the next ticks quote the same observation.
        for requests in (4, 5):
            await running.tick()
            await wait_for(lambda n=requests: _requests_at_least(fake_gecko, n))
        await running.client.flush()

        client: AsyncMongoClient = AsyncMongoClient(settings.mongo.uri, tz_aware=True)
        database = client[settings.mongo.database]
        cursor = database.quotes.find({"coin": "bitcoin"}).sort("observed_at", 1)
        stored = [document["price"] async for document in cursor]
        latest = await database.latest.find_one({"_id": "usd"})
        await client.close()
        _, body = await get_json(f"{running.http_url}/deviation?coin=bitcoin")

    assert stored == [40000.0, 45000.0, 50000.0]
    assert latest is not None
    assert latest["coins"]["bitcoin"]["price"] == 50000.0
    assert body["count"] == 3


async def _requests_at_least(fake: FakeCoinGecko, count: int) -> bool:
    return len(fake.requests) >= count


@pytest.mark.parametrize(
    ("query", "status", "code"),
    [
        ("/stats", 400, "missing_coin"),
        ("/stats?coin=", 400, "missing_coin"),
        ("/stats?coin=Bitcoin", 400, "invalid_coin"),
        ("/stats?coin=bitcoin&coin=ethereum", 400, "repeated_parameter"),
        ("/stats?coin[$ne]=x", 400, "missing_coin"),
        ("/stats?coin=dogecoin", 404, "coin_not_tracked"),
        ("/deviation?coin=bitcoin&window=1", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=1001", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=abc", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=-1", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=1e3", 400, "invalid_window"),
        ("/deviation?coin=bitcoin&window=10&window=20", 400, "repeated_parameter"),
        ("/stats?coin=ethereum", 404, "no_data"),
        ("/nowhere", 404, "not_found"),
    ],
)
async def test_bad_requests_get_a_json_error(
    settings: Settings, query: str, status: int, code: str
) -> None:
    async with run_actors(settings) as running:
        got_status, body = await get_json(running.http_url + query)

    assert got_status == status
    assert body["error"]["code"] == code
    assert body["error"]["message"]


async def test_without_a_store_the_api_answers_503(
    nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    settings = make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        service={"actors": ["http_api"]},
        http={"query_timeout_s": 0.5},
    )
    async with run_actors(settings) as running:
        status, body = await get_json(f"{running.http_url}/stats?coin=bitcoin")

    assert status == 503
    assert body["error"]["code"] == "store_unavailable"


async def test_an_event_or_query_whose_coin_is_no_coin_id_is_refused(
    settings: Settings,
) -> None:
    # Coin ids name fields of the `latest` document: "a.b" or "$x" would
    # write, or read, somewhere else.
    moment = datetime.now(UTC).replace(microsecond=0)
    good = Quote("bitcoin", "usd", 41000.0, None, None, moment, moment).to_dict()
    async with run_actors(settings) as running:
        js = running.client.jetstream()
        for coin in ("bit.coin", "$bitcoin"):
            subject = subjects.price_subject("bitcoin", "usd")
            await js.publish(subject, dumps(good | {"coin": coin}))
        await js.publish(subjects.price_subject("bitcoin", "usd"), dumps(good))

        async def served() -> bool:
            status, _ = await get_json(f"{running.http_url}/stats?coin=bitcoin")
            return status == 200

        await wait_for(served)
        reply = await running.client.request(
            subjects.QUERY_LATEST, dumps({"coin": "coins.bitcoin"}), timeout=5
        )
        client: AsyncMongoClient = AsyncMongoClient(settings.mongo.uri, tz_aware=True)
        database = client[settings.mongo.database]
        stored = await database.quotes.distinct("coin")
        latest = await database.latest.find_one({"_id": "usd"})
        await client.close()

    assert loads(reply.data)["error"]["code"] == "bad_query"
    assert stored == ["bitcoin"]
    assert latest is not None
    assert list(latest["coins"]) == ["bitcoin"]
