"""Fixtures: real nats-server and SecantusDB on free loopback ports, a fake
CoinGecko, and the actors running in-process or as `python -m cryptostats`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import pytest
from nats.aio.client import Client as NatsClient

from cryptostats import embedded
from cryptostats.config import Settings, load_settings
from cryptostats.fakegecko import FakeCoinGecko
from cryptostats.logs import configure_logging
from cryptostats.main import build_supervisor, connect_nats
from cryptostats.supervisor import Supervisor

REPO = Path(__file__).resolve().parent.parent

configure_logging("debug", json=True, cache=False)


@pytest.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[embedded.EmbeddedServer]:
    """A fresh nats-server with JetStream for one test."""
    server = embedded.embedded_nats(tmp_path / "nats-data")
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture(scope="session")
def mongo_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[embedded.EmbeddedServer]:
    """One SecantusDB for the session; each test uses its own database."""
    server = embedded.embedded_mongo(tmp_path_factory.mktemp("mongo"))
    asyncio.run(server.start())
    try:
        yield server
    finally:
        asyncio.run(server.stop())


@pytest.fixture
def nats_url(nats_server: embedded.EmbeddedServer) -> str:
    return embedded.nats_url(nats_server)


@pytest.fixture
def mongo_uri(mongo_server: embedded.EmbeddedServer) -> str:
    return embedded.mongo_uri(mongo_server)


@pytest.fixture
async def fake_gecko() -> AsyncIterator[FakeCoinGecko]:
    """A fake CoinGecko quoting bitcoin 40000, 45000, 50000, then staying."""
    fake = FakeCoinGecko.from_prices(
        {"bitcoin": [40000.0, 45000.0, 50000.0], "ethereum": [2000.0, 2100.0, 2200.0]}
    )
    async with fake:
        yield fake


def make_settings(
    nats_url: str, mongo_uri: str, base_url: str, **sections: dict[str, Any]
) -> Settings:
    """Settings for a test: its own database, a free HTTP port, fast retries."""
    values: dict[str, dict[str, Any]] = {
        "nats": {"url": nats_url, "request_timeout_s": 2.0},
        "mongo": {"uri": mongo_uri, "database": f"test_{uuid.uuid4().hex[:12]}"},
        "coingecko": {
            "base_url": base_url,
            "timeout_s": 5.0,
            "attempts": 1,
            "calls_per_minute": 60_000,
            "backoff_initial_s": 0.01,
            "backoff_max_s": 0.05,
        },
        "coins": {"ids": ["bitcoin", "ethereum"]},
        "http": {"port": embedded.free_port()},
        "schedule": {"cron": "0 0 1 1 *", "tick_at_start": False},
        "supervisor": {"backoff_initial_s": 0.05, "backoff_max_s": 0.2},
    }
    for section, update in sections.items():
        values.setdefault(section, {}).update(update)

    return load_settings(None, environ={}, overrides=values)


@pytest.fixture
def settings(nats_url: str, mongo_uri: str, fake_gecko: FakeCoinGecko) -> Settings:
    return make_settings(nats_url, mongo_uri, fake_gecko.base_url)


@dataclass
class Running:
    """Actors running in this process, and a way to reach them."""

    settings: Settings
    client: NatsClient
    supervisor: Supervisor

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.http.port}"

    async def tick(self) -> None:
        """Send one tick, as the Ticker would."""
        from cryptostats import subjects
        from cryptostats.messages import dumps

        await self.client.publish(subjects.TICK, dumps({"tickId": "test"}))
        await self.client.flush()


@contextlib.asynccontextmanager
async def run_actors(settings: Settings) -> AsyncIterator[Running]:
    """Run the actors `settings` names in this process until the block ends."""
    client = await connect_nats(settings.nats.url)
    supervisor = build_supervisor(settings, client)
    try:
        async with anyio.create_task_group() as group:
            await group.start(supervisor.run)
            try:
                yield Running(settings, client, supervisor)
            finally:
                await supervisor.stop()
    finally:
        await client.drain()


async def get_json(url: str) -> tuple[int, Any]:
    """GET `url`; the status and the decoded JSON body."""
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.json(content_type=None)


async def wait_for(
    predicate: Any, timeout_s: float = 20.0, interval_s: float = 0.1
) -> Any:
    """Await `predicate()` until it returns something truthy; fail after the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"condition not met within {timeout_s}s: last {result!r}"
            )
        await asyncio.sleep(interval_s)


class ServiceProcess:
    """`python -m cryptostats` as a child process, its log captured to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        with log_path.open("ab") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cryptostats", *args],
                env={**os.environ, **env},
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then the exit code (SIGKILL if it hangs)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self, name: str) -> list[dict[str, Any]]:
        """Every logged event called `name`, in order."""
        found = []
        for line in self.log().splitlines():
            if line.startswith("{") and f'"{name}"' in line:
                event = json.loads(line)
                if event.get("event") == name:
                    found.append(event)
        return found
