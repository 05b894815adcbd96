"""The REST API around the original two routes: history, coins, health,
metrics, caching, request ids and hostile input, on real NATS and SecantusDB."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import aiohttp
import pytest
import structlog
from multidict import CIMultiDict
from prometheus_client import REGISTRY

from cryptostats.config import Settings
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.messages import Quote, to_iso
from cryptostats.storage import HistoryQuery, QuoteStore, connect
from tests.conftest import get_json, make_settings, run_actors, wait_for

T0 = datetime(2024, 5, 1, tzinfo=UTC)
TICK = timedelta(minutes=15)


@pytest.fixture
def api_settings(nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko) -> Settings:
    """Store and HttpApi only, on a 15-minute schedule: no tick ever runs."""
    return make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        service={"actors": ["store", "http_api"]},
        schedule={"cron": "*/15 * * * *", "tick_at_start": False},
    )


def quote_at(moment: datetime, price: float, coin: str = "bitcoin") -> Quote:
    return Quote(
        coin=coin,
        vs_currency="usd",
        price=price,
        market_cap=price * 1000,
        change_24h=0.5,
        observed_at=moment,
        fetched_at=moment,
    )


async def seed(settings: Settings, quotes: list[Quote]) -> None:
    """Store `quotes` through the Store's own write path."""
    client = connect(settings.mongo.uri)
    try:
        store = QuoteStore(client[settings.mongo.database])
        await store.prepare()
        for quote in quotes:
            await store.save(quote)
    finally:
        await client.close()


async def get(url: str, **headers: str) -> tuple[int, CIMultiDict[str], bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=headers) as response,
    ):
        return response.status, response.headers.copy(), await response.read()


async def test_history_pages_newest_first_following_the_cursor(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        await seed(
            api_settings, [quote_at(T0 + i * TICK, 100.0 + i) for i in range(25)]
        )

        pages, before = [], None
        while True:
            url = f"{api.http_url}/history?coin=bitcoin&limit=10"
            status, body = await get_json(url + (f"&before={before}" if before else ""))
            assert status == 200
            pages.append(body["quotes"])
            before = body["nextBefore"]
            if before is None:
                break

        prices = [quote["price"] for page in pages for quote in page]
        assert [len(page) for page in pages] == [10, 10, 5]
        assert prices == [100.0 + i for i in reversed(range(25))]
        assert pages[0][0] == {
            "price": 124.0,
            "marketCap": 124000.0,
            "24hChange": 0.5,
            "observedAt": to_iso(T0 + 24 * TICK),
        }


async def test_a_last_page_that_is_exactly_full_has_no_next_cursor(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        await seed(api_settings, [quote_at(T0 + i * TICK, 1.0 + i) for i in range(8)])
        url = f"{api.http_url}/history?coin=bitcoin&limit=4"

        _, first = await get_json(url)
        _, last = await get_json(f"{url}&before={first['nextBefore']}")

    assert first["nextBefore"] == to_iso(T0 + 4 * TICK)
    assert [q["price"] for q in last["quotes"]] == [4.0, 3.0, 2.0, 1.0]
    assert last["nextBefore"] is None


async def test_history_crosses_a_long_gap_and_stops_at_the_start(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        old = [quote_at(T0 + i * TICK, 10.0 + i) for i in range(3)]
        recent = [
            quote_at(T0 + timedelta(days=90) + i * TICK, 20.0 + i) for i in range(3)
        ]
        await seed(api_settings, old + recent)

        status, body = await get_json(f"{api.http_url}/history?coin=bitcoin&limit=5")

        assert status == 200
        assert [q["price"] for q in body["quotes"]] == [22.0, 21.0, 20.0, 12.0, 11.0]
        status, body = await get_json(
            f"{api.http_url}/history?coin=bitcoin&limit=5&before={body['nextBefore']}"
        )
        assert [q["price"] for q in body["quotes"]] == [10.0]
        assert body["nextBefore"] is None


async def test_history_before_a_far_future_time_starts_at_the_latest_quote(
    api_settings: Settings,
) -> None:
    await seed(api_settings, [quote_at(T0 + i * TICK, 1.0 + i) for i in range(3)])
    url = "/history?coin=bitcoin&limit=2&before=9999-12-31T00:00:00Z"

    async with run_actors(api_settings) as api:
        with structlog.testing.capture_logs() as events:
            status, body = await get_json(api.http_url + url)

    reads = [e for e in events if e["event"] == "history_read"]
    assert status == 200
    assert [q["price"] for q in body["quotes"]] == [3.0, 2.0]
    assert reads[0]["windows"] == 1


async def test_history_of_a_coin_with_no_quotes_is_an_empty_page(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        status, body = await get_json(f"{api.http_url}/history?coin=ethereum")

        assert (status, body) == (
            200,
            {"coin": "ethereum", "quotes": [], "nextBefore": None},
        )


async def test_a_history_page_reads_about_as_many_quotes_as_it_returns(
    api_settings: Settings,
) -> None:
    """SecantusDB sorts all that a filter matches: each window must be small."""
    await seed(api_settings, [quote_at(T0 + i * TICK, 1.0 + i) for i in range(600)])
    client = connect(api_settings.mongo.uri)
    store = QuoteStore(client[api_settings.mongo.database])
    try:
        page = await store.history(
            HistoryQuery("bitcoin", "usd", T0 + 600 * TICK, 50, 51 * TICK.seconds)
        )
        matched = await client[api_settings.mongo.database].quotes.count_documents(
            {"observed_at": {"$gte": T0 + 549 * TICK}}
        )
    finally:
        await client.close()

    assert [q["price"] for q in page.quotes] == [600.0 - i for i in range(50)]
    assert page.windows == 1
    assert matched == 51


async def test_coins_lists_every_tracked_coin_with_its_latest_time(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        await seed(api_settings, [quote_at(T0, 1.0), quote_at(T0 + TICK, 2.0)])

        status, body = await get_json(f"{api.http_url}/coins")

        assert status == 200
        assert body == {
            "coins": [
                {"coin": "bitcoin", "aliases": [], "observedAt": to_iso(T0 + TICK)},
                {"coin": "ethereum", "aliases": [], "observedAt": None},
            ]
        }


async def test_readyz_is_200_with_a_store_and_503_without_one(
    api_settings: Settings, nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko
) -> None:
    lonely = make_settings(
        nats_url,
        mongo_uri,
        fake_gecko.base_url,
        service={"actors": ["http_api"]},
        http={"query_timeout_s": 0.5},
    )
    async with run_actors(api_settings) as api:
        ready_status, ready = await get_json(f"{api.http_url}/readyz")
    async with run_actors(lonely) as running:
        status, body = await get_json(f"{running.http_url}/readyz")
        live_status, live = await get_json(f"{running.http_url}/healthz")

    assert ready_status == 200
    assert ready["checks"] == {"nats": "ok", "store": "ok", "actors": "ok"}
    assert status == 503
    assert body["status"] == "not_ready"
    assert body["checks"]["store"] == "no store is answering"
    assert (live_status, live) == (
        200,
        {"status": "ok", "actors": {"http_api": "ready"}},
    )


async def test_stats_may_be_cached_until_the_next_tick(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        await seed(api_settings, [quote_at(T0 + timedelta(milliseconds=250), 5.0)])

        status, headers, _ = await get(f"{api.http_url}/stats?coin=bitcoin")
        now = datetime.now(UTC)
        max_age = int(headers["Cache-Control"].removeprefix("public, max-age="))
        again, _, body = await get(
            f"{api.http_url}/stats?coin=bitcoin",
            **{"If-Modified-Since": headers["Last-Modified"]},
        )
        older = (T0 - timedelta(seconds=1)).strftime("%a, %d %b %Y %H:%M:%S GMT")
        changed, _, _ = await get(
            f"{api.http_url}/stats?coin=bitcoin", **{"If-Modified-Since": older}
        )

        seconds_to_tick = 900 - (now.minute % 15 * 60 + now.second)
        assert status == 200
        assert 0 <= max_age <= 900
        assert abs(max_age - seconds_to_tick) <= 2
        assert parsedate_to_datetime(headers["Last-Modified"]) == T0
        assert (again, body) == (304, b"")
        assert changed == 200


@pytest.mark.parametrize(
    "extra",
    [
        {"If-None-Match": '"x"'},
        {"If-Modified-Since": "Thu, 01 Jan 2099 00:00:00 GMT"},
    ],
)
async def test_if_modified_since_is_ignored_beside_if_none_match_or_in_the_future(
    api_settings: Settings, extra: dict[str, str]
) -> None:
    async with run_actors(api_settings) as api:
        await seed(api_settings, [quote_at(T0, 5.0)])
        url = f"{api.http_url}/stats?coin=bitcoin"
        _, headers, _ = await get(url)

        status, _, body = await get(
            url, **({"If-Modified-Since": headers["Last-Modified"]} | extra)
        )

    assert status == 200
    assert body


@pytest.mark.parametrize(
    "since",
    [
        "yesterday",
        "Sat, 31 Jan 99999999999 00:00:00 GMT",
        "Sat, 31 Jan 2026 99999999999:00:00 GMT",
    ],
)
async def test_an_if_modified_since_that_is_no_date_is_ignored(
    api_settings: Settings, since: str
) -> None:
    async with run_actors(api_settings) as api:
        await seed(api_settings, [quote_at(T0, 5.0)])
        url = f"{api.http_url}/stats?coin=bitcoin"

        with structlog.testing.capture_logs() as events:
            status, _, body = await get(url, **{"If-Modified-Since": since})

    assert status == 200
    assert body
    assert not [e for e in events if e["log_level"] == "error"]


async def test_each_request_has_an_id_in_its_header_and_access_log_line(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        with structlog.testing.capture_logs() as events:
            _, made, _ = await get(f"{api.http_url}/coins")
            await get(f"{api.http_url}/healthz", **{"X-Request-Id": "abc-123"})
            _, replaced, _ = await get(
                f"{api.http_url}/healthz", **{"X-Request-Id": "a b"}
            )

        lines = [e for e in events if e["event"] == "http_request"]
        assert [line["request_id"] for line in lines] == [
            made["X-Request-Id"],
            "abc-123",
            replaced["X-Request-Id"],
        ]
        assert made["X-Request-Id"] != replaced["X-Request-Id"]
        assert replaced["X-Request-Id"] != "a b"
        assert lines[0]["route"] == "/coins"
        assert lines[0]["status"] == 200
        assert lines[0]["elapsed_ms"] >= 0


async def test_access_log_off_keeps_request_ids_and_metrics(
    api_settings: Settings,
) -> None:
    http = api_settings.http.model_copy(update={"access_log": False})
    settings = api_settings.model_copy(update={"http": http})
    labels = {"route": "/healthz", "method": "GET", "status": "200"}
    before = sample("cryptostats_http_requests_total", **labels)

    async with run_actors(settings) as api:
        with structlog.testing.capture_logs() as events:
            _, headers, _ = await get(f"{api.http_url}/healthz")

    assert headers["X-Request-Id"]
    assert [e for e in events if e["event"] == "http_request"] == []
    assert sample("cryptostats_http_requests_total", **labels) - before == 1


async def test_port_0_listens_on_a_free_port_and_logs_it(
    api_settings: Settings,
) -> None:
    http = api_settings.http.model_copy(update={"port": 0})
    settings = api_settings.model_copy(update={"http": http})

    with structlog.testing.capture_logs() as events:
        async with run_actors(settings):
            [url] = [e["url"] for e in events if e["event"] == "http_listening"]
            status, _, _ = await get(f"{url}/healthz")

    assert not url.endswith(":0")
    assert status == 200


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_metrics_count_requests_by_route_and_status(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        before = sample(
            "cryptostats_http_requests_total",
            route="/stats",
            method="GET",
            status="404",
        )
        await get(f"{api.http_url}/stats?coin=dogecoin")
        await get(f"{api.http_url}/stats?coin=dogecoin")

        status, headers, body = await get(f"{api.http_url}/metrics")

        after = sample(
            "cryptostats_http_requests_total",
            route="/stats",
            method="GET",
            status="404",
        )
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain; version=")
        assert after - before == 2
        text = body.decode()
        assert (
            'cryptostats_http_request_duration_seconds_bucket{le="0.001",route="/stats"}'
            in text
        )
        for name in (
            "cryptostats_ticks_total",
            "cryptostats_quotes_fetched_total",
            "cryptostats_nats_reconnects_total",
        ):
            assert f"# TYPE {name} counter" in text


async def test_a_tick_counts_quotes_fetched_and_stored(settings: Settings) -> None:
    fetched = sample("cryptostats_quotes_fetched_total")
    stored = sample("cryptostats_quotes_stored_total", outcome="new")
    async with run_actors(settings) as running:
        await running.tick()

        async def both_stored() -> bool:
            return (
                sample("cryptostats_quotes_stored_total", outcome="new") - stored >= 2
            )

        await wait_for(both_stored)

    assert sample("cryptostats_quotes_fetched_total") - fetched == 2


NINE_THOUSAND = "a" * 9000


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ("/stats?coin[$ne]=x", "missing_coin"),
        ('/stats?coin={"$ne":null}', "invalid_coin"),
        ("/stats?coin=%7B%22%24ne%22%3Anull%7D", "invalid_coin"),
        ("/stats?coin=bitcoin&coin=ethereum", "repeated_parameter"),
        ("/deviation?coin=bitcoin&window=-1", "invalid_window"),
        ("/deviation?coin=bitcoin&window=abc", "invalid_window"),
        ("/deviation?coin=bitcoin&window=1e9", "invalid_window"),
        ("/deviation?coin=bitcoin&window=", "invalid_window"),
        (f"/stats?coin={NINE_THOUSAND}", "invalid_coin"),
        ("/stats?coin=bit%00coin", "invalid_coin"),
        ("/history?coin=bitcoin&limit=0", "invalid_limit"),
        ("/history?coin=bitcoin&limit=1001", "invalid_limit"),
        ("/history?coin=bitcoin&before=yesterday", "invalid_before"),
        ("/history?coin=bitcoin&before=2024-05-01T00:00:00", "invalid_before"),
        ("/history?coin=bitcoin&before=0001-01-01T00:00:00%2B14:00", "invalid_before"),
        ("/history?coin=bitcoin&before=1&before=2", "repeated_parameter"),
    ],
)
async def test_hostile_input_is_a_json_400_and_the_server_goes_on(
    api_settings: Settings, query: str, code: str
) -> None:
    async with run_actors(api_settings) as api:
        status, body = await get_json(api.http_url + query)
        after, _ = await get_json(f"{api.http_url}/healthz")

        assert status == 400
        assert body["error"]["code"] == code
        assert body["error"]["message"]
        assert after == 200


async def test_unknown_routes_and_wrong_methods_get_json_errors(
    api_settings: Settings,
) -> None:
    async with run_actors(api_settings) as api:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{api.http_url}/nowhere") as response:
                missing = response.status, await response.json()
            async with session.post(f"{api.http_url}/stats?coin=bitcoin") as response:
                wrong = (
                    response.status,
                    await response.json(),
                    response.headers["Allow"],
                )

        assert missing[0] == 404
        assert missing[1]["error"]["code"] == "not_found"
        assert wrong[0] == 405
        assert wrong[1]["error"]["code"] == "method_not_allowed"
        assert "GET" in wrong[2]


async def test_a_404_repeats_no_more_than_256_characters_of_the_path(
    api_settings: Settings,
) -> None:
    path = "/" + "x" * 10_000

    async with run_actors(api_settings) as api:
        status, body = await get_json(api.http_url + path)

    assert status == 404
    assert body["error"]["message"] == f"Not Found: GET {path[:256]}"


async def test_uncommon_methods_share_one_metrics_label(api_settings: Settings) -> None:
    labels = {"route": "unmatched", "method": "other", "status": "405"}
    before = sample("cryptostats_http_requests_total", **labels)

    async with run_actors(api_settings) as api:
        async with aiohttp.ClientSession() as session:
            for method in ("PROPFIND", "MKCOL", "PURGE"):
                async with session.request(method, f"{api.http_url}/stats") as response:
                    assert response.status == 405

    assert sample("cryptostats_http_requests_total", **labels) - before == 3
    assert (
        sample(
            "cryptostats_http_requests_total",
            route="unmatched",
            method="FROB",
            status="405",
        )
        == 0
    )


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/stats/extra", 404),
        ("POST", "/nowhere/deep/path", 404),
        ("DELETE", "/docs/docs.js", 405),
        ("PUT", "/history", 405),
    ],
)
async def test_every_unanswered_path_or_method_is_a_counted_json_error(
    api_settings: Settings, method: str, path: str, status: int
) -> None:
    labels = {"route": "unmatched", "method": method, "status": str(status)}
    before = sample("cryptostats_http_requests_total", **labels)

    async with run_actors(api_settings) as api:
        async with (
            aiohttp.ClientSession() as session,
            session.request(method, api.http_url + path) as response,
        ):
            answer = response.status, await response.json(), response.headers

    code = "not_found" if status == 404 else "method_not_allowed"
    assert answer[0] == status
    assert answer[1]["error"]["code"] == code
    assert answer[2]["X-Request-Id"]
    assert ("Allow" in answer[2]) == (status == 405)
    assert sample("cryptostats_http_requests_total", **labels) - before == 1


@pytest.mark.parametrize(
    "request_line",
    [
        "OPTIONS * HTTP/1.1",
        "CONNECT example.com:443 HTTP/1.1",
        "GET http://example.com HTTP/1.1",
    ],
)
async def test_a_request_target_that_is_no_path_is_a_json_404(
    api_settings: Settings, request_line: str
) -> None:
    async with run_actors(api_settings) as api:
        host, port = api.http_url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(
                f"{request_line}\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
            )
            answer = await reader.read()
        finally:
            writer.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 404 ")
    assert json.loads(body)["error"]["code"] == "not_found"


@pytest.mark.parametrize("where", ["url", "header"])
async def test_a_request_over_the_parser_limits_is_a_4xx_without_a_traceback(
    api_settings: Settings, where: str
) -> None:
    async with run_actors(api_settings) as api:
        huge = "x" * 20_000
        url = f"{api.http_url}/stats?coin={huge}" if where == "url" else api.http_url
        headers = {"X-Filler": huge} if where == "header" else {}

        with structlog.testing.capture_logs() as events:
            status, _, _ = await get(
                url + ("/healthz" if where == "header" else ""), **headers
            )
            after, _ = await get_json(f"{api.http_url}/healthz")

        assert 400 <= status < 500
        assert after == 200
        assert [
            e["log_level"] for e in events if e["event"] == "http_protocol_error"
        ] == ["warning"]
        assert not any("exc_info" in e or e["log_level"] == "error" for e in events)
