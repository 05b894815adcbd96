"""A local stand-in for CoinGecko's `/api/v3/simple/price` and `market_chart`.

It replays recorded history one point per request, for tests, the offline demo
and benchmarks, and serves recorded `/coins/{id}/market_chart` bodies.
Run `python -m cryptostats.fakegecko --help` for the command.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import signal
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from functools import cache
from importlib import resources
from os import PathLike
from types import TracebackType
from typing import Any, Self

from aiohttp import web
from aiohttp.typedefs import Handler

API_PREFIX = "/api/v3"
SUPPORTED_CURRENCY = "usd"
DEFAULT_LOOKBACK = timedelta(days=120)
FROM_PRICES_START = datetime(2024, 1, 1, tzinfo=UTC)
FROM_PRICES_SUPPLY = 19_000_000

_BUNDLED_FILES = {
    "bitcoin": "btc-usd-max.csv",
    "ethereum": "eth-usd-max.csv",
    "solana": "sol-usd-max.csv",
}
_BUNDLED_MARKET_CHARTS = {"bitcoin": "bitcoin-market-chart-30d.json"}
_SNAPPED_AT_FORMAT = "%Y-%m-%d %H:%M:%S UTC"
_PING_BODY = {"gecko_says": "(V3) To the Moon!"}

# A fake has nothing worth draining; a slow scripted answer must not hold up
# a test's teardown for aiohttp's default of 60 s.
_SHUTDOWN_TIMEOUT_S = 0.5


@dataclass(frozen=True)
class Point:
    """One historical observation of a coin, as the fake will quote it.

    `change_24h` is the percent change of `price` from the previous point of
    the same history, whatever the spacing between the two points.
    """

    observed_at: datetime
    price: float
    market_cap: float | None
    change_24h: float | None


def load_history_csv(path: str | PathLike[str]) -> list[Point]:
    """Read a CoinGecko daily export (`snapped_at,price,market_cap,...`).

    Args:
        path: the CSV file.

    Returns:
        The points in file order. A market cap of 0 or empty is None; the
        first point has no `change_24h`.

    Raises:
        OSError: the file cannot be read.
        ValueError: a row has a missing or unreadable value.
    """
    with open(path, newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))

    observations = [_parse_row(row, line) for line, row in enumerate(rows, start=2)]

    return _chain(observations)


def bundled_history(coin_id: str) -> list[Point]:
    """Return the daily history shipped in `cryptostats/data` for one coin.

    Args:
        coin_id: `bitcoin`, `ethereum` or `solana`.

    Raises:
        ValueError: no history is bundled for `coin_id`.
    """
    return list(_bundled_history(coin_id))


def bundled_market_chart(coin_id: str) -> dict[str, Any]:
    """Return the recorded `/coins/{id}/market_chart` body of one coin.

    Raises:
        ValueError: no market chart is bundled for `coin_id`.
    """
    name = _BUNDLED_MARKET_CHARTS.get(coin_id)
    if name is None:
        raise ValueError(f"no bundled market chart for {coin_id!r}")

    data = resources.files(__package__ or "cryptostats") / "data" / name
    body: dict[str, Any] = json.loads(data.read_text(encoding="utf-8"))

    return body


def bundled_feed(coin_id: str, on_or_after: date | datetime | None = None) -> Feed:
    """Return a feed replaying the bundled history of one coin.

    Args:
        coin_id: `bitcoin`, `ethereum` or `solana`.
        on_or_after: the first point served is the first one on or after this;
            by default `DEFAULT_LOOKBACK` before the last point of the file.

    Raises:
        ValueError: no history is bundled for `coin_id`, or none of it is on
            or after `on_or_after`.
    """
    points = _bundled_history(coin_id)
    if on_or_after is None:
        on_or_after = points[-1].observed_at - DEFAULT_LOOKBACK

    try:
        return Feed.from_date(points, on_or_after)
    except ValueError as error:
        raise ValueError(f"{coin_id}: {error}") from None


class Feed:
    """A replay of one coin's points: each request for the coin takes one.

    Once the last point has been taken, it is served again for every later
    request, with the same `observed_at`.
    """

    def __init__(self, points: Sequence[Point], start: int = 0) -> None:
        """Replay `points` from index `start`.

        Raises:
            ValueError: `points` is empty or `start` is not an index into it.
        """
        if not points:
            raise ValueError("a feed needs at least one point")
        if not 0 <= start < len(points):
            raise ValueError(f"start {start} is outside 0..{len(points) - 1}")

        self.points = tuple(points)
        self.position = start
        self.exhausted = False

    @classmethod
    def from_date(cls, points: Sequence[Point], on_or_after: date | datetime) -> Feed:
        """Replay `points` from the first one on or after `on_or_after`.

        A `date` compares with the UTC day of each point; a `datetime` must
        be timezone-aware.

        Raises:
            ValueError: no point is on or after `on_or_after`.
            TypeError: `on_or_after` is a naive datetime.
        """
        for index, point in enumerate(points):
            if _is_on_or_after(point, on_or_after):
                return cls(points, index)

        raise ValueError(f"no point on or after {on_or_after.isoformat()}")

    def peek(self) -> Point:
        """Return the point the next request will get, without taking it."""
        return self.points[self.position]

    def take(self) -> Point:
        """Return the current point and move on to the next, if any."""
        point = self.points[self.position]
        if self.position + 1 < len(self.points):
            self.position += 1
        else:
            self.exhausted = True

        return point


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake received. Header names are lowercase."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]

    @classmethod
    def of(cls, request: web.Request) -> RecordedRequest:
        """Capture what a test may want to assert about `request`."""
        query: dict[str, list[str]] = {}
        for name, value in request.query.items():
            query.setdefault(name, []).append(value)

        headers: dict[str, str] = {}
        for name, value in request.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value

        return cls(request.method, request.path, query, headers)


@dataclass(frozen=True)
class _ScriptedAnswer:
    status: int
    body: bytes
    headers: dict[str, str]
    delay_s: float

    def response(self) -> web.Response:
        return web.Response(status=self.status, body=self.body, headers=self.headers)


class FakeCoinGecko:
    """An HTTP server answering `/simple/price` and `/ping` like CoinGecko.

    Answers come first from the scripted queue (see `enqueue`), then from
    the feeds. Only `usd` is quoted; ids without a feed are left out of the
    answer, as CoinGecko does. `delay_s` delays every answer.

    Attributes:
        feeds: the feed of each coin id.
        market_charts: the `/coins/{id}/market_chart` body of each coin id;
            by default the recorded 30 days of bitcoin, whatever `days` asks.
        requests: every request received, in order, whatever its path.
        delay_s: seconds to wait before every answer.
    """

    def __init__(self, feeds: Mapping[str, Feed], delay_s: float = 0.0) -> None:
        self.feeds = dict(feeds)
        self.market_charts: dict[str, Any] = {
            coin: bundled_market_chart(coin) for coin in _BUNDLED_MARKET_CHARTS
        }
        self.requests: list[RecordedRequest] = []
        self.delay_s = delay_s
        self._script: deque[_ScriptedAnswer] = deque()
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    @classmethod
    def from_prices(
        cls,
        prices: Mapping[str, Sequence[float]],
        start: datetime = FROM_PRICES_START,
        step: timedelta = timedelta(minutes=15),
    ) -> FakeCoinGecko:
        """Build a fake whose feeds quote the given prices in turn.

        Point `i` is observed at `start + i * step`, with a market cap of
        `price * FROM_PRICES_SUPPLY` and the change from point `i - 1`.

        Raises:
            ValueError: `start` is naive, or a coin has no prices.
        """
        if start.tzinfo is None:
            raise ValueError("start must be timezone-aware")

        feeds = {
            coin: Feed(_points_from_prices(coin_prices, start, step))
            for coin, coin_prices in prices.items()
        }

        return cls(feeds)

    @property
    def base_url(self) -> str:
        """The URL the API is served under, such as `http://127.0.0.1:8091/api/v3`.

        Raises:
            RuntimeError: the server is not started.
        """
        if self._base_url is None:
            raise RuntimeError("fake coingecko is not started")

        return self._base_url

    def enqueue(
        self,
        status: int,
        body: str | bytes | dict[str, Any] | list[Any],
        headers: Mapping[str, str] | None = None,
        content_type: str | None = "application/json",
        delay_s: float = 0.0,
    ) -> None:
        """Script the answer to the next request not already scripted.

        Scripted answers are served first in, first out to `/simple/price`,
        `/coins/{id}/market_chart` and `/ping` requests, before any feed is
        consulted or advanced.

        Args:
            status: the HTTP status.
            body: sent as is; a dict or list is sent as JSON.
            headers: sent as given, on top of those aiohttp always adds.
            content_type: the Content-Type, unless `headers` has one; None
                sends none.
            delay_s: seconds to wait before answering, on top of `delay_s`
                of the fake.
        """
        answer_headers = dict(headers or {})
        has_type = any(name.lower() == "content-type" for name in answer_headers)
        if content_type is not None and not has_type:
            answer_headers["Content-Type"] = content_type

        answer = _ScriptedAnswer(status, _encode(body), answer_headers, delay_s)
        self._script.append(answer)

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving and return the base URL.

        Args:
            host: the address to listen on.
            port: the port to listen on; 0 picks a free one.

        Raises:
            RuntimeError: the server is already started.
            OSError: the address cannot be bound.
        """
        if self._runner is not None:
            raise RuntimeError("fake coingecko is already started")

        runner = web.AppRunner(
            self._application(),
            access_log=None,
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except BaseException:
            await runner.cleanup()
            raise

        self._runner = runner
        self._base_url = f"http://{host}:{runner.addresses[0][1]}{API_PREFIX}"

        return self._base_url

    async def stop(self) -> None:
        """Stop serving. Does nothing if the server is not started."""
        runner, self._runner, self._base_url = self._runner, None, None
        if runner is not None:
            await runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self._record])
        app.router.add_get(f"{API_PREFIX}/ping", self._ping, allow_head=False)
        app.router.add_get(
            f"{API_PREFIX}/simple/price", self._simple_price, allow_head=False
        )
        app.router.add_get(
            f"{API_PREFIX}/coins/{{coin}}/market_chart",
            self._market_chart,
            allow_head=False,
        )

        return app

    @web.middleware
    async def _record(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        self.requests.append(RecordedRequest.of(request))
        return await handler(request)

    async def _ping(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(lambda: web.json_response(_PING_BODY))

    async def _simple_price(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(lambda: self._price_response(request))

    async def _market_chart(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(lambda: self._market_chart_response(request))

    def _market_chart_response(self, request: web.Request) -> web.Response:
        if not request.query.get("vs_currency"):
            return _error_response("Missing parameter vs_currency")
        if not request.query.get("days"):
            return _error_response("Missing parameter days")
        body = self.market_charts.get(request.match_info["coin"])
        if body is None:
            return web.json_response({"error": "coin not found"}, status=404)

        return web.json_response(body)

    async def _answer(self, build: Callable[[], web.Response]) -> web.Response:
        # The script and the feeds are consumed on arrival, before any delay,
        # so that concurrent requests get answers in the order they came.
        delay_s = self.delay_s
        if self._script:
            scripted = self._script.popleft()
            response, delay_s = scripted.response(), delay_s + scripted.delay_s
        else:
            response = build()

        if delay_s > 0:
            await asyncio.sleep(delay_s)

        return response

    def _price_response(self, request: web.Request) -> web.Response:
        ids = _split_param(request.query.get("ids", ""))
        if not ids:
            return _error_response("Missing parameter ids")
        currencies = _split_param(request.query.get("vs_currencies", "").lower())
        if not currencies:
            return _error_response("Missing parameter vs_currencies")

        flags = _Flags.of(request.query)
        body = {
            coin: _quote(self.feeds[coin].take(), currencies, flags)
            for coin in ids
            if coin in self.feeds
        }

        return web.json_response(body)


@dataclass(frozen=True)
class _Flags:
    market_cap: bool
    change_24h: bool
    last_updated_at: bool

    @classmethod
    def of(cls, query: Mapping[str, str]) -> _Flags:
        def flag(name: str) -> bool:
            return query.get(name, "").lower() == "true"

        return cls(
            market_cap=flag("include_market_cap"),
            change_24h=flag("include_24hr_change"),
            last_updated_at=flag("include_last_updated_at"),
        )


def _quote(point: Point, currencies: list[str], flags: _Flags) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if SUPPORTED_CURRENCY in currencies:
        fields[SUPPORTED_CURRENCY] = point.price
        if flags.market_cap:
            fields[f"{SUPPORTED_CURRENCY}_market_cap"] = point.market_cap
        if flags.change_24h:
            fields[f"{SUPPORTED_CURRENCY}_24h_change"] = point.change_24h

    if flags.last_updated_at:
        fields["last_updated_at"] = int(point.observed_at.timestamp())

    return fields


def _split_param(value: str) -> list[str]:
    items = (item.strip() for item in value.split(","))
    return list(dict.fromkeys(item for item in items if item))


def _error_response(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _encode(body: str | bytes | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(body, bytes):
        return body
    if isinstance(body, str):
        return body.encode()

    return json.dumps(body).encode()


def _parse_row(row: dict[str, str], line: int) -> tuple[datetime, float, float | None]:
    try:
        snapped_at = datetime.strptime(row["snapped_at"], _SNAPPED_AT_FORMAT)
        price = float(row["price"])
        market_cap = float(row["market_cap"] or 0.0)
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"line {line}: unreadable row {row!r}") from error

    return snapped_at.replace(tzinfo=UTC), price, market_cap or None


def _chain(observations: Sequence[tuple[datetime, float, float | None]]) -> list[Point]:
    points: list[Point] = []
    previous: float | None = None
    for observed_at, price, market_cap in observations:
        change = (price - previous) / previous * 100 if previous else None
        points.append(Point(observed_at, price, market_cap, change))
        previous = price

    return points


def _points_from_prices(
    prices: Sequence[float], start: datetime, step: timedelta
) -> list[Point]:
    observations = [
        (start + index * step, float(price), price * FROM_PRICES_SUPPLY)
        for index, price in enumerate(prices)
    ]

    return _chain(observations)


@cache
def _bundled_history(coin_id: str) -> tuple[Point, ...]:
    name = _BUNDLED_FILES.get(coin_id)
    if name is None:
        known = ", ".join(sorted(_BUNDLED_FILES))
        raise ValueError(f"no bundled history for {coin_id!r}; known: {known}")

    data = resources.files(__package__ or "cryptostats") / "data" / name
    with resources.as_file(data) as path:
        return tuple(load_history_csv(path))


def _is_on_or_after(point: Point, moment: date | datetime) -> bool:
    if isinstance(moment, datetime):
        return point.observed_at >= moment

    return point.observed_at.astimezone(UTC).date() >= moment


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cryptostats.fakegecko",
        description="Serve bundled CoinGecko history, one point per request.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument(
        "--coins",
        default=",".join(_BUNDLED_FILES),
        help=f"comma-separated coin ids among {', '.join(_BUNDLED_FILES)}",
    )
    parser.add_argument(
        "--start",
        type=date.fromisoformat,
        help="first day replayed (default: 120 days before each file's last day)",
    )
    parser.add_argument("--delay-s", type=float, default=0.0)

    return parser


def _bundled_feeds(coins: str, start: date | None) -> dict[str, Feed]:
    coin_ids = _split_param(coins)
    if not coin_ids:
        raise ValueError("--coins names no coin")

    return {coin: bundled_feed(coin, start) for coin in coin_ids}


async def _serve_until_signalled(fake: FakeCoinGecko, host: str, port: int) -> None:
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stopping.set)

    base_url = await fake.start(host, port)
    try:
        print(json.dumps({"base_url": base_url}), flush=True)
        await stopping.wait()
    finally:
        await fake.stop()


def main(argv: Sequence[str] | None = None) -> None:
    """Run the fake until SIGINT or SIGTERM, printing `{"base_url": ...}`."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    try:
        feeds = _bundled_feeds(args.coins, args.start)
    except ValueError as error:
        parser.error(str(error))

    fake = FakeCoinGecko(feeds, delay_s=args.delay_s)

    asyncio.run(_serve_until_signalled(fake, args.host, args.port))


if __name__ == "__main__":
    main()
