"""Tests of the fake CoinGecko server, its history loading and its command."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from cryptostats.fakegecko import (
    FakeCoinGecko,
    Feed,
    Point,
    bundled_feed,
    bundled_history,
    load_history_csv,
)

START = datetime(2024, 1, 1, tzinfo=UTC)
ALL_FLAGS = {
    "include_market_cap": "true",
    "include_24hr_change": "true",
    "include_last_updated_at": "true",
}


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoinGecko]:
    fake = FakeCoinGecko.from_prices(
        {"bitcoin": [40000, 45000, 50000], "ethereum": [2000]}, start=START
    )
    await fake.start()
    try:
        yield fake
    finally:
        await fake.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_price(
    session: aiohttp.ClientSession, fake: FakeCoinGecko, **params: str
) -> tuple[int, Any]:
    async with session.get(f"{fake.base_url}/simple/price", params=params) as resp:
        return resp.status, await resp.json()


def write_csv(path: Path, *rows: str) -> Path:
    path.write_text("snapped_at,price,market_cap,total_volume\n" + "\n".join(rows))
    return path


def test_market_cap_of_zero_or_empty_is_unknown(tmp_path: Path) -> None:
    csv_path = write_csv(
        tmp_path / "coin.csv",
        "2026-01-29 00:00:00 UTC,10.0,0.0,0.0",
        "2026-01-30 00:00:00 UTC,12.0,,5.0",
        "2026-01-31 00:00:00 UTC,9.0,900.5,5.0",
    )

    points = load_history_csv(csv_path)

    assert [point.market_cap for point in points] == [None, None, 900.5]


def test_change_is_percent_from_previous_row_and_none_for_the_first(
    tmp_path: Path,
) -> None:
    csv_path = write_csv(
        tmp_path / "coin.csv",
        "2026-01-30 00:00:00 UTC,10.0,100.0,0.0",
        "2026-01-31 00:00:00 UTC,12.0,120.0,0.0",
        "2026-02-01 00:00:00 UTC,9.0,90.0,0.0",
    )

    points = load_history_csv(csv_path)

    assert points[0] == Point(datetime(2026, 1, 30, tzinfo=UTC), 10.0, 100.0, None)
    assert points[1].change_24h == pytest.approx(20.0)
    assert points[2].change_24h == pytest.approx(-25.0)


def test_unreadable_row_is_a_value_error_naming_its_line(tmp_path: Path) -> None:
    csv_path = write_csv(
        tmp_path / "coin.csv",
        "2026-01-30 00:00:00 UTC,10.0,100.0,0.0",
        "2026-01-31,twelve,120.0,0.0",
    )

    with pytest.raises(ValueError, match="line 3"):
        load_history_csv(csv_path)


def test_bundled_history_is_utc_daily_and_ends_on_the_files_last_day() -> None:
    points = bundled_history("bitcoin")

    assert points[0].observed_at == datetime(2010, 7, 18, tzinfo=UTC)
    assert points[0].market_cap is None
    assert points[-1].observed_at == datetime(2026, 1, 31, tzinfo=UTC)
    assert points[-1].price == pytest.approx(84141.77856967277)


def test_bundled_history_of_an_unknown_coin_is_rejected() -> None:
    with pytest.raises(ValueError, match="dogecoin"):
        bundled_history("dogecoin")


def test_bundled_feed_starts_120_days_before_the_last_day_by_default() -> None:
    feed = bundled_feed("solana")

    assert feed.peek().observed_at == datetime(2024, 8, 22, tzinfo=UTC)


def test_feed_from_a_date_starts_on_the_first_point_on_or_after_it() -> None:
    points = bundled_history("ethereum")

    feed = Feed.from_date(points, date(2015, 8, 9))

    assert feed.peek().observed_at == datetime(2015, 8, 10, tzinfo=UTC)


def test_feed_refuses_a_start_outside_its_points() -> None:
    points = [Point(START, 1.0, None, None), Point(START, 2.0, None, None)]

    with pytest.raises(ValueError, match="start 2"):
        Feed(points, start=2)


def test_from_prices_spaces_points_by_step_with_a_supply_based_market_cap() -> None:
    step = timedelta(minutes=5)

    fake = FakeCoinGecko.from_prices({"bitcoin": [40000, 50000]}, START, step)

    assert fake.feeds["bitcoin"].points == (
        Point(START, 40000.0, 40000 * 19_000_000, None),
        Point(START + step, 50000.0, 50000 * 19_000_000, 25.0),
    )


async def test_each_request_takes_one_point_and_the_last_one_sticks(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    params = {"ids": "bitcoin", "vs_currencies": "usd", **ALL_FLAGS}

    answers = [(await get_price(session, fake, **params))[1] for _ in range(5)]

    prices = [answer["bitcoin"]["usd"] for answer in answers]
    updated = [answer["bitcoin"]["last_updated_at"] for answer in answers]
    assert prices == [40000, 45000, 50000, 50000, 50000]
    assert updated[2:] == [int((START + timedelta(minutes=30)).timestamp())] * 3
    assert fake.feeds["bitcoin"].exhausted


async def test_all_flags_give_coingecko_shaped_fields(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    status, body = await get_price(
        session, fake, ids="bitcoin,ethereum", vs_currencies="usd", **ALL_FLAGS
    )

    assert status == 200
    assert body == {
        "bitcoin": {
            "usd": 40000,
            "usd_market_cap": 40000 * 19_000_000,
            "usd_24h_change": None,
            "last_updated_at": int(START.timestamp()),
        },
        "ethereum": {
            "usd": 2000,
            "usd_market_cap": 2000 * 19_000_000,
            "usd_24h_change": None,
            "last_updated_at": int(START.timestamp()),
        },
    }


@pytest.mark.parametrize(
    ("flag", "field"),
    [
        ("include_market_cap", "usd_market_cap"),
        ("include_24hr_change", "usd_24h_change"),
        ("include_last_updated_at", "last_updated_at"),
    ],
)
async def test_each_include_flag_adds_only_its_field(
    fake: FakeCoinGecko, session: aiohttp.ClientSession, flag: str, field: str
) -> None:
    _, body = await get_price(
        session, fake, ids="bitcoin", vs_currencies="usd", **{flag: "true"}
    )

    assert set(body["bitcoin"]) == {"usd", field}


async def test_without_flags_only_the_price_is_given(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    _, body = await get_price(
        session, fake, ids="bitcoin", vs_currencies="usd", include_market_cap="false"
    )

    assert body == {"bitcoin": {"usd": 40000}}


async def test_unknown_ids_are_absent_from_the_answer(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    status, body = await get_price(
        session, fake, ids="dogecoin,bitcoin", vs_currencies="usd"
    )

    assert status == 200
    assert body == {"bitcoin": {"usd": 40000}}


async def test_currencies_other_than_usd_are_left_out_per_coin(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    _, body = await get_price(
        session, fake, ids="bitcoin", vs_currencies="eur,usd", include_market_cap="true"
    )

    assert body == {"bitcoin": {"usd": 40000, "usd_market_cap": 40000 * 19_000_000}}


async def test_missing_ids_is_a_400_with_a_coingecko_error(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    status, body = await get_price(session, fake, vs_currencies="usd")

    assert status == 400
    assert body == {"error": "Missing parameter ids"}


async def test_ping_answers_like_coingecko(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    async with session.get(f"{fake.base_url}/ping") as resp:
        body = await resp.json()

    assert body == {"gecko_says": "(V3) To the Moon!"}


async def test_scripted_answers_come_first_in_order_then_the_feeds(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(429, {"status": {"error_code": 429}}, headers={"Retry-After": "7"})
    fake.enqueue(502, "<html>bad gateway</html>", content_type="text/html")
    url = f"{fake.base_url}/simple/price?ids=bitcoin&vs_currencies=usd"
    answers = []

    for _ in range(3):
        async with session.get(url) as resp:
            answers.append((resp.status, resp.headers, await resp.read()))

    (s1, h1, b1), (s2, h2, b2), (s3, _, b3) = answers
    assert (s1, h1["Retry-After"], h1["Content-Type"]) == (429, "7", "application/json")
    assert b1 == b'{"status": {"error_code": 429}}'
    assert (s2, h2["Content-Type"], b2) == (
        502,
        "text/html",
        b"<html>bad gateway</html>",
    )
    assert (s3, json.loads(b3)) == (200, {"bitcoin": {"usd": 40000}})


async def test_a_slow_scripted_answer_outlasts_a_short_client_timeout(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(200, {}, delay_s=1.0)
    timeout = aiohttp.ClientTimeout(total=0.2)

    with pytest.raises(asyncio.TimeoutError):
        await session.get(f"{fake.base_url}/ping", timeout=timeout)


async def test_delay_s_slows_every_answer(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.delay_s = 0.2
    loop = asyncio.get_running_loop()
    started = loop.time()

    await get_price(session, fake, ids="bitcoin", vs_currencies="usd")

    assert loop.time() - started >= 0.2


async def test_every_request_is_recorded_with_its_query_and_headers(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    url = f"{fake.base_url}/simple/price?ids=bitcoin&vs_currencies=usd&ids=x"

    async with session.get(url, headers={"X-Cg-Demo-Api-Key": "k"}):
        pass
    async with session.get(f"{fake.base_url}/nowhere") as resp:
        missing_status = resp.status

    first, second = fake.requests
    assert (first.method, first.path) == ("GET", "/api/v3/simple/price")
    assert first.query == {"ids": ["bitcoin", "x"], "vs_currencies": ["usd"]}
    assert first.headers["x-cg-demo-api-key"] == "k"
    assert (second.path, missing_status) == ("/api/v3/nowhere", 404)


async def test_base_url_is_on_loopback_under_api_v3() -> None:
    async with FakeCoinGecko({}) as fake:
        base_url = fake.base_url

    assert base_url.startswith("http://127.0.0.1:")
    assert base_url.endswith("/api/v3")
    with pytest.raises(RuntimeError):
        fake.base_url  # noqa: B018


async def test_command_prints_its_base_url_and_stops_on_sigterm(
    session: aiohttp.ClientSession,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "cryptostats.fakegecko", "--coins", "bitcoin", "--start", "2024-01-01"),
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), timeout=30)
        base_url = json.loads(line)["base_url"]
        params = {"ids": "bitcoin", "vs_currencies": "usd", **ALL_FLAGS}
        async with session.get(f"{base_url}/simple/price", params=params) as resp:
            body = await resp.json()
    finally:
        process.send_signal(signal.SIGTERM)
        returncode = await asyncio.wait_for(process.wait(), timeout=30)

    updated = datetime.fromtimestamp(body["bitcoin"]["last_updated_at"], UTC)
    assert updated == datetime(2024, 1, 1, tzinfo=UTC)
    assert returncode == 0
