"""History import through the Publisher and the Store, on real servers."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import structlog
from pymongo import AsyncMongoClient

from cryptostats import embedded
from cryptostats.config import Settings, load_settings
from cryptostats.errors import ImportFailedError
from cryptostats.fakegecko import FakeCoinGecko, bundled_market_chart
from cryptostats.history_import import (
    ImportPlan,
    quotes_from_csv,
    quotes_from_market_chart,
)
from cryptostats.main import parse_args, run_import
from cryptostats.messages import Quote
from cryptostats.storage import QuoteStore
from tests.conftest import REPO, ServiceProcess, get_json, run_actors, wait_for

CSV_ROWS = """snapped_at,price,market_cap,total_volume
2024-01-01 00:00:00 UTC,100.0,0.0,5.0
2024-01-02 00:00:00 UTC,110.0,2200.0,6.0
2024-01-03 00:00:00 UTC,99.0,1980.0,7.0
2024-01-04 00:00:00 UTC,not-a-price,1.0,1.0
"""
DAY_1 = datetime(2024, 1, 1, tzinfo=UTC)


async def stored_quotes(settings: Settings, coin: str) -> list[dict[str, Any]]:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo.uri, tz_aware=True)
    try:
        cursor = client[settings.mongo.database].quotes.find({"coin": coin})
        return sorted(await cursor.to_list(), key=lambda doc: doc["observed_at"])
    finally:
        await client.close()


async def latest(settings: Settings, coin: str) -> dict[str, Any] | None:
    client: AsyncMongoClient = AsyncMongoClient(settings.mongo.uri, tz_aware=True)
    try:
        store = QuoteStore(client[settings.mongo.database])
        return await store.latest(coin, settings.coins.vs_currency)
    finally:
        await client.close()


def is_this_python(path: str) -> bool:
    """Whether `path`, as typed in the repository, is the running interpreter."""
    return (REPO / path).resolve() == Path(sys.executable).resolve()


@pytest.fixture
def csv_file(tmp_path: Path) -> Path:
    path = tmp_path / "btc.csv"
    path.write_text(CSV_ROWS)
    return path


async def test_a_csv_import_stores_each_row_with_its_values(
    settings: Settings, csv_file: Path
) -> None:
    plan = ImportPlan(coins=("bitcoin",), csv_path=csv_file, progress=False)

    report = await run_import(settings, plan)
    rows = await stored_quotes(settings, "bitcoin")

    assert (report.read, report.rejected, report.published) == (3, 1, 3)
    assert [row["price"] for row in rows] == [100.0, 110.0, 99.0]
    assert [row["market_cap"] for row in rows] == [None, 2200.0, 1980.0]
    assert rows[0]["observed_at"] == DAY_1
    assert rows[0]["change_24h"] is None
    assert rows[1]["change_24h"] == pytest.approx(10.0)
    assert rows[2]["change_24h"] == pytest.approx(-10.0)
    document = await latest(settings, "bitcoin")
    assert document is not None
    assert document["price"] == 99.0
    assert document["observed_at"] == rows[2]["observed_at"]


async def test_importing_the_same_csv_twice_stores_nothing_new(
    settings: Settings, csv_file: Path
) -> None:
    plan = ImportPlan(coins=("bitcoin",), csv_path=csv_file, progress=False)
    await run_import(settings, plan)
    before = await stored_quotes(settings, "bitcoin")

    again = await run_import(settings, plan)
    after = await stored_quotes(settings, "bitcoin")

    assert again.duplicates == again.published == 3
    assert after == before


async def test_a_market_chart_import_stores_every_point_of_the_answer(
    settings: Settings, fake_gecko: FakeCoinGecko
) -> None:
    chart = bundled_market_chart("bitcoin")
    plan = ImportPlan(coins=("bitcoin",), days=30, progress=False)

    report = await run_import(settings, plan)
    rows = await stored_quotes(settings, "bitcoin")

    first_ms, first_price = chart["prices"][0]
    assert report.published == len(chart["prices"]) == len(rows) == 720
    assert rows[0]["price"] == first_price
    assert rows[0]["market_cap"] == chart["market_caps"][0][1]
    assert rows[0]["observed_at"].timestamp() * 1000 == pytest.approx(first_ms)
    assert rows[-1]["price"] == chart["prices"][-1][1]
    asked = fake_gecko.requests[-1]
    assert asked.path.endswith("/coins/bitcoin/market_chart")
    assert asked.query == {"vs_currency": ["usd"], "days": ["30"]}


def test_a_market_chart_point_that_is_not_a_positive_price_is_skipped() -> None:
    body = {
        "prices": [[1_700_000_000_000, 1.5], [1_700_000_360_000, -1], ["x", 2.0]],
        "market_caps": [[1_700_000_000_000, 10.0]],
    }

    quotes, rejected = quotes_from_market_chart(
        body, "bitcoin", "usd", datetime.now(UTC)
    )

    assert [quote.price for quote in quotes] == [1.5]
    assert quotes[0].market_cap == 10.0
    assert rejected == 2


def read_csv(path: Path, text: str | bytes) -> tuple[list[Quote], int]:
    """Write `text` to `path` and read it as a CSV export of bitcoin."""
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return quotes_from_csv(path, "bitcoin", "usd", datetime.now(UTC))


HEADER = "snapped_at,price,market_cap,total_volume\n"


def test_csv_rows_dated_in_the_future_or_before_2009_are_skipped(
    tmp_path: Path,
) -> None:
    rows = [
        "0001-01-01 00:00:00 UTC,5.0,0,0",
        "2000-06-01 00:00:00 UTC,6.0,0,0",
        "2024-01-01 00:00:00 UTC,7.0,0,0",
        "2099-01-01 00:00:00 UTC,0.0001,0,0",
    ]

    quotes, rejected = read_csv(tmp_path / "f.csv", HEADER + "\n".join(rows))

    assert [quote.price for quote in quotes] == [7.0]
    assert rejected == 3


def test_a_rise_from_almost_nothing_has_no_24h_change(tmp_path: Path) -> None:
    rows = ["2024-02-12 00:00:00 UTC,1e-300,0,0", "2024-02-13 00:00:00 UTC,1e10,0,0"]

    quotes, rejected = read_csv(tmp_path / "f.csv", HEADER + "\n".join(rows))

    assert rejected == 0
    assert [quote.change_24h for quote in quotes] == [None, None]


def test_a_csv_saved_with_a_byte_order_mark_reads_like_one_without(
    tmp_path: Path,
) -> None:
    text = "\ufeff" + HEADER + "2024-01-01 00:00:00 UTC,7.0,0,0\n"

    quotes, rejected = read_csv(tmp_path / "f.csv", text)

    assert ([quote.price for quote in quotes], rejected) == ([7.0], 0)


def test_a_number_with_underscores_or_spaces_is_not_a_price(tmp_path: Path) -> None:
    rows = ["2024-01-01 00:00:00 UTC,1_000,0,0", "2024-01-02 00:00:00 UTC, 5,0,0"]

    quotes, rejected = read_csv(tmp_path / "f.csv", HEADER + "\n".join(rows))

    assert (quotes, rejected) == ([], 2)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        (HEADER.encode() + b"2024-01-01 00:00:00 UTC,7.0,\xff,0\n", "not UTF-8"),
        (HEADER + "2024-01-01 00:00:00 UTC," + "9" * 200_000 + ",0,0\n", "line 2"),
    ],
)
def test_a_file_that_is_not_utf8_csv_fails_the_import_naming_it(
    tmp_path: Path, content: str | bytes, complaint: str
) -> None:
    with pytest.raises(ImportFailedError, match=complaint) as caught:
        read_csv(tmp_path / "f.csv", content)

    assert "f.csv" in caught.value.reason


def import_plan(*argv: str) -> ImportPlan:
    """The plan of `import ARGV` with the default coins and aliases."""
    return ImportPlan.from_args(parse_args(["import", *argv]), load_settings(None, {}))


def test_an_import_of_a_former_coin_id_stores_under_the_current_one() -> None:
    plan = import_plan("--csv", "f.csv", "--coin", "matic-network")

    assert plan.coins == ("polygon-ecosystem-token",)


def test_an_import_of_a_coin_the_service_does_not_track_is_refused() -> None:
    with pytest.raises(ImportFailedError, match="not a configured coin") as caught:
        import_plan("--market-chart", "--coin", "bitcoin", "--coin", "solana")

    assert caught.value.coin == "solana"
    assert "bitcoin" in caught.value.reason


def test_the_command_line_keeps_working_without_a_subcommand() -> None:
    plain = parse_args(["--port", "3001"])
    imported = parse_args(["import", "--csv", "f.csv", "--coin", "bitcoin"])

    assert plain.command is None
    assert plain.port == 3001
    assert imported.command == "import"
    assert imported.csv == Path("f.csv")
    assert imported.coin == ["bitcoin"]


async def test_the_import_command_runs_against_configured_servers(
    settings: Settings, csv_file: Path, tmp_path: Path
) -> None:
    env = {"NATS_URL": settings.nats.url, "MONGO_URI": settings.mongo.uri}
    config = tmp_path / "config.toml"
    config.write_text(f'[mongo]\ndatabase = "{settings.mongo.database}"\n')
    args = ["--config", str(config), "import", "--csv", str(csv_file)]
    process = ServiceProcess(
        [*args, "--coin", "bitcoin", "--no-progress"], env, tmp_path / "import.log"
    )

    code = process.process.wait(60)

    assert code == 0, process.log()
    events = [json.loads(line) for line in process.log().splitlines() if "{" in line]
    done = [event for event in events if event.get("event") == "history_imported"]
    assert done and done[0]["published"] == 3
    assert len(await stored_quotes(settings, "bitcoin")) == 3


async def test_the_store_says_how_to_import_history_of_an_empty_coin(
    settings: Settings,
) -> None:
    with structlog.testing.capture_logs() as logs:
        async with run_actors(settings):

            async def offered() -> list[dict[str, Any]]:
                return [log for log in logs if log["event"] == "history_missing"]

            events = await wait_for(offered, timeout_s=10)

    assert {event["coin"] for event in events} == {"bitcoin", "ethereum"}
    python, *rest = events[0]["command"].split()
    assert is_this_python(python)
    assert rest[:3] == ["-m", "cryptostats", "import"]


async def test_an_import_next_to_the_running_service_reaches_its_deviation(
    settings: Settings, tmp_path: Path
) -> None:
    # Rows older than any quote the fake CoinGecko answers.
    csv_file = tmp_path / "old.csv"
    csv_file.write_text(CSV_ROWS.replace("2024-", "2020-"))
    url = "/deviation?coin=bitcoin&window=10"
    async with run_actors(settings) as running:
        await running.tick()

        async def counted(count: int) -> Any:
            status, body = await get_json(running.http_url + url)
            return body if status == 200 and body["count"] == count else None

        await wait_for(lambda: counted(1), timeout_s=10)
        # The CSV's rows are older than the quote just fetched: the latest
        # stays, and its recent prices take them.
        await run_import(
            settings, ImportPlan(coins=("bitcoin",), csv_path=csv_file, progress=False)
        )

        body = await wait_for(lambda: counted(4), timeout_s=10)

    assert body["deviation"] > 0


async def test_an_import_runs_beside_a_service_on_its_embedded_servers(
    tmp_path: Path, csv_file: Path, fake_gecko: FakeCoinGecko
) -> None:
    port = embedded.free_port()
    config = tmp_path / "config.toml"
    config.write_text(f'[coins]\nids = ["bitcoin"]\n[http]\nport = {port}\n')
    common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
    env = {"COINGECKO_BASE_URL": fake_gecko.base_url, "NATS_URL": "", "MONGO_URI": ""}
    service = ServiceProcess(common, env, tmp_path / "service.log")
    try:
        await wait_for(lambda: _ready(service), timeout_s=30)
        imported = ServiceProcess(
            [*common, "import", "--csv", str(csv_file), "--coin", "bitcoin"],
            env,
            tmp_path / "import.log",
        )
        import_code = imported.process.wait(60)
        second = ServiceProcess(common, env, tmp_path / "second.log")
        second_code = second.process.wait(30)
        _, body = await get_json(f"http://127.0.0.1:{port}/deviation?coin=bitcoin")
    finally:
        code = service.stop()

    assert (import_code, code) == (0, 0), imported.log() + service.log()
    assert imported.events("embedded_servers_shared")
    assert not imported.events("history_missing")
    assert body["count"] == 3
    assert second_code == 2
    [failed] = second.events("service_failed")
    assert failed["error_type"] == "DataDirInUseError"
    assert f"in use by process {service.process.pid}" in failed["error"]


async def _ready(service: ServiceProcess) -> bool:
    return bool(service.events("service_ready"))
