"""`python -m cryptostats` as a user runs it: whole, and split in two."""

from __future__ import annotations

import csv
import json
import socket
import statistics
from datetime import date, datetime
from pathlib import Path

import aiohttp

from cryptostats import embedded
from cryptostats.fakegecko import FakeCoinGecko, Feed, bundled_history
from tests.conftest import REPO, ServiceProcess, get_json, wait_for

START = date(2024, 3, 1)
POINTS = 6


def csv_prices(path: Path, first: date, count: int) -> list[tuple[str, float]]:
    """(ISO day, price) of `count` rows from `first`, read straight from the file."""
    rows = []
    with path.open(newline="") as file:
        for row in csv.DictReader(file):
            day = datetime.strptime(row["snapped_at"], "%Y-%m-%d %H:%M:%S UTC").date()
            if day >= first and len(rows) < count:
                rows.append((day.isoformat(), float(row["price"])))
    return rows


def short_feed(coin: str) -> Feed:
    """POINTS days of a coin's real history, then the last one again forever."""
    feed = Feed.from_date(bundled_history(coin), START)
    return Feed(feed.points[feed.position : feed.position + POINTS])


def write_config(path: Path, port: int, schedule: str) -> Path:
    path.write_text(
        f"""
[coins]
ids = ["bitcoin", "ethereum"]

[schedule]
cron = "{schedule}"

[http]
port = {port}

[coingecko]
# The local stand-in has no rate limit; the public plan's would space
# calls 12 s apart.
calls_per_minute = 6000
"""
    )
    return path


async def wait_until_all_stored(http_url: str) -> None:
    async def all_stored() -> bool:
        for coin in ("bitcoin", "ethereum"):
            try:
                status, body = await get_json(
                    f"{http_url}/deviation?coin={coin}&window=100"
                )
            except aiohttp.ClientConnectionError:
                return False
            if status != 200 or body["count"] < POINTS:
                return False
        return True

    await wait_for(all_stored, timeout_s=60, interval_s=0.5)


async def assert_answers_match_the_csv(http_url: str) -> None:
    files = {"bitcoin": "btc-usd-max.csv", "ethereum": "eth-usd-max.csv"}
    for coin, name in files.items():
        expected = csv_prices(REPO / "cryptostats" / "data" / name, START, POINTS)
        prices = [price for _, price in expected]

        _, stats = await get_json(f"{http_url}/stats?coin={coin}")
        _, deviation = await get_json(f"{http_url}/deviation?coin={coin}&window=5")

        assert stats["price"] == prices[-1]
        assert stats["observedAt"] == f"{expected[-1][0]}T00:00:00.000Z"
        assert deviation["count"] == 5
        assert deviation["deviation"] == statistics.pstdev(prices[-5:])


async def test_the_service_serves_real_history_as_fetched(tmp_path: Path) -> None:
    fake = FakeCoinGecko({coin: short_feed(coin) for coin in ("bitcoin", "ethereum")})
    port = embedded.free_port()
    config = write_config(tmp_path / "config.toml", port, "* * * * * *")
    async with fake:
        service = ServiceProcess(
            ["--config", str(config), "--data-dir", str(tmp_path / "data")],
            {"COINGECKO_BASE_URL": fake.base_url, "NATS_URL": "", "MONGO_URI": ""},
            tmp_path / "service.log",
        )
        try:
            await wait_until_all_stored(f"http://127.0.0.1:{port}")
            await assert_answers_match_the_csv(f"http://127.0.0.1:{port}")
        finally:
            code = service.stop()

    assert code == 0, service.log()
    assert service.events("service_ready")


async def test_two_processes_with_complementary_actors_behave_as_one(
    tmp_path: Path, nats_url: str, mongo_uri: str
) -> None:
    fake = FakeCoinGecko({coin: short_feed(coin) for coin in ("bitcoin", "ethereum")})
    port = embedded.free_port()
    config = write_config(tmp_path / "config.toml", port, "* * * * * *")
    async with fake:
        env = {
            "COINGECKO_BASE_URL": fake.base_url,
            "NATS_URL": nats_url,
            "MONGO_URI": mongo_uri,
        }
        common = ["--config", str(config), "--data-dir", str(tmp_path / "data")]
        reader = ServiceProcess(
            [*common, "--actors", "store,http_api"],
            env,
            tmp_path / "reader.log",
        )
        writer = ServiceProcess(
            [*common, "--actors", "ticker,fetcher,publisher"],
            env,
            tmp_path / "writer.log",
        )
        try:
            await wait_until_all_stored(f"http://127.0.0.1:{port}")
            await assert_answers_match_the_csv(f"http://127.0.0.1:{port}")
        finally:
            codes = writer.stop(), reader.stop()

    assert codes == (0, 0), writer.log() + reader.log()
    assert "store" not in _started_actors(writer.log())
    assert "fetcher" not in _started_actors(reader.log())


def _started_actors(log: str) -> set[str]:
    actors = set()
    for line in log.splitlines():
        if line.startswith("{") and '"actor_ready"' in line:
            actors.add(json.loads(line)["actor"])
    return actors


async def test_a_taken_http_port_stops_the_service_with_a_config_error(
    tmp_path: Path, nats_url: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        service = ServiceProcess(
            ["--actors", "http_api", "--port", str(port)],
            {"NATS_URL": nats_url},
            tmp_path / "service.log",
        )
        code = service.process.wait(30)

    assert code == 2, service.log()
    assert f"cannot listen on 127.0.0.1:{port}" in service.log()
    assert "actor_restarting" not in service.log()


async def test_an_unreachable_nats_server_at_start_exits_1_naming_it(
    tmp_path: Path,
) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        url = f"nats://127.0.0.1:{closed.getsockname()[1]}"
    config = tmp_path / "config.toml"
    config.write_text("[nats]\nconnect_wait_s = 1.0\n")
    service = ServiceProcess(
        ["--config", str(config), "--actors", "http_api", "--port", "0"],
        {"NATS_URL": url},
        tmp_path / "service.log",
    )

    code = service.process.wait(30)

    assert code == 1, service.log()
    [failed] = service.events("service_failed")
    assert failed["error_type"] == "NatsUnreachableError"
    assert url in failed["error"]


async def test_sigterm_during_a_nats_outage_still_exits_0(
    tmp_path: Path, nats_server: embedded.EmbeddedServer
) -> None:
    port = embedded.free_port()
    service = ServiceProcess(
        ["--actors", "http_api", "--port", str(port)],
        {"NATS_URL": embedded.nats_url(nats_server)},
        tmp_path / "service.log",
    )
    await wait_for(lambda: _answers(f"http://127.0.0.1:{port}/healthz"), 30)
    await nats_server.stop()

    status, body = await get_json(f"http://127.0.0.1:{port}/stats?coin=bitcoin")
    code = service.stop()

    assert status == 503, body
    assert code == 0, service.log()


async def _answers(url: str) -> bool:
    try:
        status, _ = await get_json(url)
    except aiohttp.ClientConnectionError:
        return False
    return status == 200
