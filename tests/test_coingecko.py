"""The CoinGecko client alone, against the fake CoinGecko server.

Each failure CoinGecko is known for is scripted with its status, headers and
body. Waits run on a virtual clock where a test would otherwise sleep.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest
from structlog.testing import capture_logs

from cryptostats import embedded
from cryptostats.coingecko import (
    CallBudget,
    CoinGeckoClient,
    batches,
    retry_after_s,
    safe_snippet,
)
from cryptostats.config import CoinGeckoSettings, CoinSettings, load_settings
from cryptostats.errors import ApiKeyRejectedError, ConfigError
from cryptostats.fakegecko import FakeCoinGecko
from tests.conftest import REPO

RATE_LIMIT_BODY = {
    "status": {
        "error_code": 429,
        "error_message": "You've exceeded the Rate Limit. Please visit"
        " https://www.coingecko.com/en/api/pricing to subscribe to our API"
        " plans for higher rate limits.",
    }
}
PRO_KEY_ON_PUBLIC_HOST_BODY = {
    "status": {
        "error_code": 10010,
        "error_message": "If you are using Pro API key, please change your root"
        " URL from api.coingecko.com to pro-api.coingecko.com",
    }
}
DEMO_KEY_ON_PRO_HOST_BODY = {
    "status": {
        "error_code": 10011,
        "error_message": "If you are using Demo API key, please change your root"
        " URL from pro-api.coingecko.com to api.coingecko.com",
    }
}
UNAUTHORIZED_BODY = {
    "status": {"error_code": 10002, "error_message": "API Key Missing"},
}
CLOUDFLARE_PAGE = (
    '<!DOCTYPE html>\n<html lang="en-US"><head><title>Just a moment...</title>'
    '<meta http-equiv="refresh" content="390"><style>body{margin:0}</style>'
    '</head><body><div class="main-wrapper"><h1>api.coingecko.com</h1>'
    "<p>Checking your browser before accessing api.coingecko.com.</p>"
    + "<p>"
    + "x" * 2000
    + "</p></div></body></html>"
)
KEY = "CG-s3cr3t-k3y-never-shown"
FAST = {
    "calls_per_minute": 60_000,
    "attempts": 3,
    "backoff_initial_s": 0.01,
    "backoff_max_s": 0.05,
    "timeout_s": 2.0,
}


class VirtualClock:
    """A monotonic clock that moves only when something sleeps on it.

    Remembers at what virtual time each request reached the fake.
    """

    def __init__(self, fake: FakeCoinGecko | None = None) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.call_times: list[float] = []
        self._fake = fake

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.note_calls()
        self.sleeps.append(seconds)
        self.now += seconds

    def note_calls(self) -> None:
        seen = len(self._fake.requests) if self._fake else 0
        self.call_times += [self.now] * (seen - len(self.call_times))


@pytest.fixture
async def fake() -> AsyncIterator[FakeCoinGecko]:
    fake = FakeCoinGecko.from_prices({"bitcoin": [64000.1, 64100.0]})
    async with fake:
        yield fake


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def make_client(
    session: aiohttp.ClientSession,
    base_url: str,
    clock: VirtualClock | None = None,
    **settings: Any,
) -> CoinGeckoClient:
    values = {**FAST, "base_url": base_url, **settings}
    coingecko = CoinGeckoSettings.model_validate(values)
    if clock is None:
        return CoinGeckoClient(coingecko, session)

    return CoinGeckoClient(coingecko, session, clock=clock, sleep=clock.sleep)


def price_calls(fake: FakeCoinGecko) -> list[Any]:
    return [r for r in fake.requests if r.path.endswith("/simple/price")]


def events(logs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


# 429


async def test_a_429_waiting_past_the_deadline_skips_the_fetch_and_the_next_one(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(429, RATE_LIMIT_BODY, headers={"retry-after": "119"})
    clock = VirtualClock(fake)
    client = make_client(session, fake.base_url, clock)

    with capture_logs() as logs:
        # Ticks every 30 s: a wait of 119 s runs into the next ones.
        first = await client.fetch(["bitcoin"], "usd", deadline=clock() + 30)
        clock.now += 30
        second = await client.fetch(["bitcoin"], "usd", deadline=clock() + 30)

    assert first.quotes == [] and first.skipped == ["bitcoin"]
    assert first.wait_s is not None and first.wait_s >= 119
    assert second.skipped == ["bitcoin"] and second.attempts == 0
    assert second.wait_s == pytest.approx(89, abs=0.1)
    assert len(price_calls(fake)) == 1
    assert sum(clock.sleeps) == 0
    [warning] = events(logs, "rate_limited")
    assert warning["log_level"] == "warning"
    assert warning["retry_after_s"] == 119
    assert warning["wait_s"] >= 119


async def test_a_429_with_retry_after_is_waited_out_before_the_next_call(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(429, RATE_LIMIT_BODY, headers={"retry-after": "119"})
    clock = VirtualClock(fake)
    client = make_client(session, fake.base_url, clock)

    result = await client.fetch(["bitcoin"], "usd", deadline=clock() + 900)
    clock.note_calls()

    assert [quote.price for quote in result.quotes] == [64000.1]
    assert result.attempts == 2
    assert clock.call_times[1] - clock.call_times[0] >= 119


async def test_a_429_with_an_http_date_waits_until_that_date(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    until = datetime.now(UTC) + timedelta(seconds=45)
    fake.enqueue(
        429, RATE_LIMIT_BODY, headers={"Retry-After": format_datetime(until, True)}
    )
    clock = VirtualClock(fake)
    client = make_client(session, fake.base_url, clock)

    result = await client.fetch(["bitcoin"], "usd")
    clock.note_calls()

    assert len(result.quotes) == 1
    assert 43 <= clock.call_times[1] - clock.call_times[0] <= 46


async def test_a_429_without_retry_after_backs_off_exponentially_and_gives_up(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    for _ in range(4):
        fake.enqueue(429, RATE_LIMIT_BODY)
    clock = VirtualClock(fake)
    client = make_client(
        session,
        fake.base_url,
        clock,
        attempts=4,
        backoff_initial_s=2.0,
        backoff_max_s=60,
    )

    result = await client.fetch(["bitcoin"], "usd")

    assert result.failed == ["bitcoin"] and result.attempts == 4
    backoffs = [s for s in clock.sleeps if s > 0.01]
    assert len(backoffs) == 3
    for index, seconds in enumerate(backoffs):
        low = 2.0 * 2**index
        assert low <= seconds <= low + 2.0


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("119", 119.0),
        ("0", 0.0),
        ("soon", None),
        ("-5", None),
        ("Thu, 03 Dec 2026 17:02:00 GMT", 60.0),
        ("Thu, 03 Dec 2026 16:00:00 GMT", 0.0),
        ("99999999", 3600.0),
    ],
)
def test_retry_after_reads_seconds_and_http_dates(
    header: str | None, expected: float | None
) -> None:
    now = datetime(2026, 12, 3, 17, 1, tzinfo=UTC)

    assert retry_after_s(header, now) == expected


# Call budget and batching


async def test_the_call_budget_spaces_calls_evenly() -> None:
    clock = VirtualClock()
    budget = CallBudget(30, clock=clock, sleep=clock.sleep)
    times = []

    for _ in range(4):
        await budget.acquire()
        times.append(clock())

    assert [b - a for a, b in itertools.pairwise(times)] == [2.0] * 3


async def test_thousands_of_coins_stay_within_the_public_budget_and_url_limit(
    session: aiohttp.ClientSession,
) -> None:
    coins = [f"coin-number-{index}" for index in range(3000)]
    fake = FakeCoinGecko.from_prices({coin: [1.5] for coin in coins[::7]})
    clock = VirtualClock(fake)
    async with fake:
        client = make_client(
            session, fake.base_url, clock, calls_per_minute=0, max_url_chars=4000
        )
        with capture_logs():
            result = await client.fetch(coins, "usd")
        clock.note_calls()
        calls = price_calls(fake)
        urls = [
            f"{fake.base_url}/simple/price?"
            + urlencode(
                {name: values[0] for name, values in call.query.items()}, safe=","
            )
            for call in calls
        ]

    asked = [coin for call in calls for coin in call.query["ids"][0].split(",")]
    assert asked == coins
    # Batches are full: about as few calls as the URL limit allows.
    assert len(calls) <= math.ceil(len(",".join(coins)) / (4000 - 300)) + 1
    assert max(len(url) for url in urls) <= 4000
    assert len(result.quotes) == len(coins[::7])
    assert len(result.missing) == len(coins) - len(coins[::7])
    for start in clock.call_times:
        in_minute = [t for t in clock.call_times if start <= t < start + 60]
        assert len(in_minute) <= 5


def test_batches_never_split_an_id_and_fit_the_limit() -> None:
    coins = ["a" * 10, "b" * 10, "c" * 10, "d" * 5]

    assert list(batches(coins, 21)) == [coins[:2], coins[2:]]


# 5xx, timeouts, refused connections


async def test_a_5xx_is_retried_then_the_answer_is_used(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(502, {"error": "bad gateway"})
    fake.enqueue(500, "Internal Server Error", content_type="text/plain")
    client = make_client(session, fake.base_url)

    result = await client.fetch(["bitcoin"], "usd")

    assert [quote.price for quote in result.quotes] == [64000.1]
    assert result.attempts == 3


async def test_retries_are_bounded_and_a_failed_batch_is_logged(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    for _ in range(5):
        fake.enqueue(503, {"error": "unavailable"})
    client = make_client(session, fake.base_url)

    with capture_logs() as logs:
        result = await client.fetch(["bitcoin"], "usd")

    assert result.failed == ["bitcoin"] and result.quotes == []
    assert result.attempts == 3 and len(price_calls(fake)) == 3
    [failure] = events(logs, "fetch_failed")
    assert failure["status"] == 503


async def test_a_timeout_is_retried(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(200, {"bitcoin": {"usd": 1.0}}, delay_s=1.0)
    client = make_client(session, fake.base_url, timeout_s=0.2)

    result = await client.fetch(["bitcoin"], "usd")

    assert [quote.price for quote in result.quotes] == [64000.1]
    assert result.attempts == 2


async def test_a_refused_connection_is_retried_then_counted_as_failed(
    session: aiohttp.ClientSession,
) -> None:
    base_url = f"http://127.0.0.1:{embedded.free_port()}/api/v3"
    client = make_client(session, base_url)

    with capture_logs() as logs:
        result = await client.fetch(["bitcoin", "ethereum"], "usd")

    assert result.failed == ["bitcoin", "ethereum"] and result.attempts == 3
    [failure] = events(logs, "fetch_failed")
    assert "unreachable" in failure["error"]


# HTML pages


@pytest.mark.parametrize(("status", "attempts"), [(200, 1), (403, 1), (503, 3)])
async def test_an_html_page_is_a_failed_fetch_with_a_short_safe_snippet(
    fake: FakeCoinGecko, session: aiohttp.ClientSession, status: int, attempts: int
) -> None:
    for _ in range(attempts):
        fake.enqueue(
            status,
            CLOUDFLARE_PAGE,
            headers={"Server": "cloudflare", "cf-ray": "8e1f2a3b4c5d6e7f-AMS"},
            content_type="text/html",
        )
    client = make_client(session, fake.base_url)

    with capture_logs() as logs:
        result = await client.fetch(["bitcoin"], "usd")

    assert result.quotes == [] and result.failed == ["bitcoin"]
    assert result.attempts == attempts
    [failure] = events(logs, "fetch_failed")
    assert failure["status"] == status
    assert failure["snippet"].startswith("Just a moment...")
    assert "<" not in failure["snippet"] and len(failure["snippet"]) <= 120


def test_a_snippet_never_shows_the_key_or_control_characters() -> None:
    text = f"<p>bad key {KEY}</p>\x1b[31m\r\nmore"

    snippet = safe_snippet(text, KEY, html=True)

    assert snippet == "bad key [key] [31m more"


# Bodies


async def test_null_market_cap_and_change_stay_null(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(
        200,
        {"bitcoin": {"usd": 64000.1, "usd_market_cap": None, "usd_24h_change": None}},
    )
    fake.enqueue(200, {"bitcoin": {"usd": 64000.1}})
    client = make_client(session, fake.base_url)

    results = [await client.fetch(["bitcoin"], "usd") for _ in range(2)]

    for result in results:
        [quote] = result.quotes
        assert quote.price == 64000.1
        assert quote.market_cap is None and quote.change_24h is None


async def test_coins_left_out_or_empty_are_missing(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(200, {"bitcoin": {"usd": 64000.1}, "matic-network": {}})
    client = make_client(session, fake.base_url)

    result = await client.fetch(["bitcoin", "matic-network", "notacoin"], "usd")

    assert [quote.coin for quote in result.quotes] == ["bitcoin"]
    assert result.missing == ["matic-network", "notacoin"]
    assert price_calls(fake)[0].query["ids"] == ["bitcoin,matic-network,notacoin"]


@pytest.mark.parametrize(
    "price",
    ["0", "-64000.1", '"64000.1"', "NaN", "Infinity", "1e400", "1e300", "true"],
)
async def test_an_unusable_price_is_rejected(
    fake: FakeCoinGecko, session: aiohttp.ClientSession, price: str
) -> None:
    fake.enqueue(200, '{"bitcoin":{"usd":' + price + ',"usd_market_cap":1.0}}')
    client = make_client(session, fake.base_url)

    result = await client.fetch(["bitcoin"], "usd")

    assert result.quotes == []
    assert list(result.rejected) == ["bitcoin"]


@pytest.mark.parametrize("ahead_s", [2 * 3600, 200 * 24 * 3600])
async def test_a_quote_observed_hours_ahead_of_our_clock_is_rejected(
    fake: FakeCoinGecko, session: aiohttp.ClientSession, ahead_s: int
) -> None:
    # It would stay the coin's latest until that time came.
    observed = int(time.time()) + ahead_s
    fake.enqueue(200, {"bitcoin": {"usd": 64000.1, "last_updated_at": observed}})
    client = make_client(session, fake.base_url)

    result = await client.fetch(["bitcoin"], "usd")

    assert result.quotes == []
    assert list(result.rejected) == ["bitcoin"]


# Plans and keys


@pytest.mark.parametrize(
    ("plan", "header"), [("demo", "x-cg-demo-api-key"), ("pro", "x-cg-pro-api-key")]
)
async def test_the_key_goes_in_the_plans_header(
    fake: FakeCoinGecko, session: aiohttp.ClientSession, plan: str, header: str
) -> None:
    client = make_client(session, fake.base_url, plan=plan, api_key=KEY)

    await client.fetch(["bitcoin"], "usd")

    [call] = fake.requests
    assert call.headers[header] == KEY
    assert KEY not in repr(client._settings)


async def test_the_public_plan_sends_no_key(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    client = make_client(session, fake.base_url)

    await client.fetch(["bitcoin"], "usd")

    assert not any("api-key" in name for name in fake.requests[0].headers)


@pytest.mark.parametrize(
    ("plan", "status", "body", "advice"),
    [
        ("demo", 400, PRO_KEY_ON_PUBLIC_HOST_BODY, "plan = 'pro'"),
        ("pro", 400, DEMO_KEY_ON_PRO_HOST_BODY, "plan = 'demo'"),
        ("demo", 401, UNAUTHORIZED_BODY, "COINGECKO_API_KEY"),
    ],
)
async def test_a_rejected_key_at_ping_is_a_configuration_error(
    fake: FakeCoinGecko,
    session: aiohttp.ClientSession,
    plan: str,
    status: int,
    body: dict[str, Any],
    advice: str,
) -> None:
    fake.enqueue(status, body)
    client = make_client(session, fake.base_url, plan=plan, api_key=KEY)

    with capture_logs() as logs, pytest.raises(ApiKeyRejectedError) as caught:
        await client.check_access()

    assert fake.requests[0].path.endswith("/ping")
    assert advice in str(caught.value) and "127.0.0.1" in str(caught.value)
    assert KEY not in str(caught.value) and KEY not in repr(logs)


async def test_a_rejected_key_on_a_fetch_is_a_configuration_error(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(400, PRO_KEY_ON_PUBLIC_HOST_BODY)
    client = make_client(session, fake.base_url, plan="demo", api_key=KEY)

    with pytest.raises(ApiKeyRejectedError):
        await client.fetch(["bitcoin"], "usd")

    assert len(fake.requests) == 1


async def test_a_400_for_another_reason_is_a_failed_fetch(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(400, {"error": "invalid vs_currency"})
    client = make_client(session, fake.base_url)

    result = await client.fetch(["bitcoin"], "usd")

    assert result.failed == ["bitcoin"] and result.attempts == 1


async def test_a_ping_that_fails_otherwise_only_logs(
    fake: FakeCoinGecko, session: aiohttp.ClientSession
) -> None:
    fake.enqueue(503, CLOUDFLARE_PAGE, content_type="text/html")
    client = make_client(session, fake.base_url, plan="pro", api_key=KEY)

    with capture_logs() as logs:
        await client.check_access()

    [warning] = events(logs, "ping_failed")
    assert "503" in warning["error"]


# Settings


def test_config_toml_ships_the_defaults_of_plans_budget_and_aliases() -> None:
    from_file = load_settings(REPO / "config.toml", environ={})

    assert from_file.coingecko == CoinGeckoSettings()
    assert from_file.coins == CoinSettings()
    assert from_file.coins.aliases == {"matic-network": "polygon-ecosystem-token"}


@pytest.mark.parametrize(
    ("plan", "root", "header", "budget"),
    [
        ("public", "https://api.coingecko.com/api/v3", None, 5),
        ("demo", "https://api.coingecko.com/api/v3", "x-cg-demo-api-key", 30),
        ("pro", "https://pro-api.coingecko.com/api/v3", "x-cg-pro-api-key", 500),
    ],
)
def test_the_plan_picks_host_header_and_budget(
    plan: str, root: str, header: str | None, budget: int
) -> None:
    environ = {"COINGECKO_PLAN": plan}
    if header:
        environ["COINGECKO_API_KEY"] = KEY

    settings = load_settings(None, environ=environ).coingecko

    assert (settings.root_url, settings.key_header) == (root, header)
    assert settings.call_budget == budget


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"COINGECKO_API_KEY": KEY}, "plan is 'public'"),
        ({"COINGECKO_PLAN": "pro"}, "needs an API key"),
        ({"COINGECKO_PLAN": "gold", "COINGECKO_API_KEY": KEY}, "coingecko.plan"),
    ],
)
def test_a_key_that_does_not_fit_the_plan_is_refused_without_showing_it(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, environ=environ)

    assert message in str(caught.value)
    assert KEY not in str(caught.value)


def test_aliases_resolve_to_current_ids_and_may_not_chain() -> None:
    coins = CoinSettings(ids=("bitcoin", "matic-network", "polygon-ecosystem-token"))

    assert coins.tracked == ("bitcoin", "polygon-ecosystem-token")
    assert coins.canonical("matic-network") == "polygon-ecosystem-token"
    assert coins.canonical("bitcoin") == "bitcoin"
    with pytest.raises(ValueError, match="itself an alias"):
        CoinSettings(aliases={"a": "b", "b": "c"})
