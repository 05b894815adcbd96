"""History import: past quotes from CoinGecko, stored like fetched ones.

Quotes come from a CoinGecko CSV export (`snapped_at,price,market_cap,
total_volume`) or from `/coins/{id}/market_chart`, and go to the Publisher
on the quotes subject, exactly as the Fetcher hands on a tick's quotes. The
stream's message ids and the Store's unique index make a second import of
the same quotes store nothing new.
"""

from __future__ import annotations

import argparse
import bisect
import csv
import math
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from os import PathLike
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import structlog
from nats.aio.client import Client as NatsClient
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from tqdm import tqdm

from cryptostats import subjects
from cryptostats.coingecko import CoinGeckoClient
from cryptostats.config import COIN_RE, Settings
from cryptostats.errors import ImportFailedError, UpstreamError
from cryptostats.messages import Quote, encode_quotes, loads, plausible_observed_at

log = structlog.get_logger("cryptostats.history_import")

BATCH_QUOTES = 500
HANDOFF_ATTEMPTS = 3
STORE_POLL_S = 0.2
# How long to wait for the Store: a fixed margin plus a floor on its rate.
STORE_WAIT_S = 60.0
STORE_WAIT_RATE = 100.0
DAY = timedelta(days=1)
# A point counts as "24 h before" another if it is this close to exactly 24 h.
CHANGE_TOLERANCE = timedelta(hours=2)
MAX_PRICE = 1e12
SNAPPED_AT_FORMAT = "%Y-%m-%d %H:%M:%S UTC"

Observation = tuple[datetime, float, float | None]


@dataclass(frozen=True)
class ImportPlan:
    """Which history to import: a CSV file of one coin, or market charts."""

    coins: tuple[str, ...]
    csv_path: Path | None = None
    days: int = 30
    progress: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace, settings: Settings) -> ImportPlan:
        """The plan the `import` command line asks for.

        Raises:
            ImportFailedError: the coins or days given cannot be imported.
        """
        given = tuple(args.coin or ())
        if args.csv is not None and len(given) != 1:
            coins_given = ",".join(given) or "a csv file"
            raise ImportFailedError(coins_given, "--csv needs exactly one --coin")
        for coin in given:
            if not COIN_RE.fullmatch(coin):
                raise ImportFailedError(coin, "not a coin id")
        # A former id is stored under the id CoinGecko uses now, as fetched
        # quotes are; a coin the service does not track would be stored
        # where no route ever reads it.
        coins = tuple(dict.fromkeys(settings.coins.canonical(c) for c in given))
        untracked = [coin for coin in coins if coin not in settings.coins.tracked]
        if untracked:
            raise ImportFailedError(
                ",".join(untracked),
                "not a configured coin: add it to coins.ids first "
                f"(configured: {', '.join(settings.coins.tracked)})",
            )
        if args.days < 1:
            raise ImportFailedError(",".join(coins), "--days must be at least 1")

        return cls(
            coins=coins or settings.coins.ids,
            csv_path=args.csv,
            days=args.days,
            progress=not args.no_progress,
        )

    async def run(self, nats: NatsClient, settings: Settings) -> ImportReport:
        """Read the quotes, hand them on, and wait until they are stored.

        Raises:
            ImportFailedError: a source could not be read, or the quotes
                could not be handed on or stored in time.
        """
        quotes, rejected = await self.read(settings)
        report = await publish_history(
            nats, quotes, settings.nats.request_timeout_s, self.progress
        )
        report.rejected = rejected
        new = report.published - report.duplicates
        timeout_s = STORE_WAIT_S + new / STORE_WAIT_RATE
        await wait_until_stored(nats, new, timeout_s, self.progress)

        return report

    async def read(self, settings: Settings) -> tuple[list[Quote], int]:
        """The quotes of every coin of the plan, and how many were skipped.

        Raises:
            ImportFailedError: the file or CoinGecko could not be read.
        """
        fetched_at = datetime.now(UTC)
        vs = settings.coins.vs_currency
        if self.csv_path is not None:
            try:
                return quotes_from_csv(self.csv_path, self.coins[0], vs, fetched_at)
            except OSError as exc:
                raise ImportFailedError(self.coins[0], str(exc)) from None

        quotes: list[Quote] = []
        rejected = 0
        async with aiohttp.ClientSession() as session:
            client = CoinGeckoClient(settings.coingecko, session)
            for coin in self.coins:
                try:
                    body = await client.market_chart(coin, vs, self.days)
                except UpstreamError as exc:
                    raise ImportFailedError(coin, str(exc)) from None
                coin_quotes, coin_rejected = quotes_from_market_chart(
                    body, coin, vs, fetched_at
                )
                quotes += coin_quotes
                rejected += coin_rejected

        return quotes, rejected


@dataclass
class ImportReport:
    """What one import did."""

    read: int = 0
    rejected: int = 0
    published: int = 0
    duplicates: int = 0


def import_command(
    coin: str, data_dir: Path | None = None, source: str = "--market-chart"
) -> str:
    """The command line that fills the history of `coin`, beside a service
    whose embedded servers keep their data in `data_dir` (None: the default)."""
    where = f" --data-dir {data_dir}" if data_dir is not None else ""
    return f"{_interpreter()} -m cryptostats{where} import {source} --coin {coin}"


def _interpreter() -> str:
    """This Python, as a path to type from the current directory: the one
    that has cryptostats installed (`.venv/bin/python` after `make run`)."""
    path = Path(sys.executable)
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def quotes_from_csv(
    path: str | PathLike[str], coin: str, vs_currency: str, fetched_at: datetime
) -> tuple[list[Quote], int]:
    """Read a CoinGecko CSV export of one coin.

    A market cap of 0 means unknown; a row without a usable price is skipped
    and counted.

    Returns:
        (the quotes, oldest first; the number of rows skipped).

    Raises:
        OSError: the file cannot be read.
        ImportFailedError: the file is not UTF-8 text, or not CSV.
    """
    observations: list[Observation] = []
    rejected = 0
    # utf-8-sig: spreadsheet programs start a saved CSV with a byte order mark.
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        try:
            for row in reader:
                observation = _csv_observation(row, fetched_at)
                if observation is None:
                    log.warning("import_row_rejected", coin=coin, line=reader.line_num)
                    rejected += 1
                    continue
                observations.append(observation)
        except UnicodeDecodeError as exc:
            raise ImportFailedError(coin, f"{path} is not UTF-8 text: {exc}") from None
        except csv.Error as exc:
            # The reader counts only the lines it has read whole.
            reason = f"{path} line {reader.line_num + 1}: {exc}"
            raise ImportFailedError(coin, reason) from None

    return _quotes(observations, coin, vs_currency, fetched_at), rejected


def quotes_from_market_chart(
    body: Any, coin: str, vs_currency: str, fetched_at: datetime
) -> tuple[list[Quote], int]:
    """Turn a `/coins/{id}/market_chart` body into quotes.

    Returns:
        (the quotes, oldest first; the number of points skipped).

    Raises:
        ImportFailedError: the body has no `prices` list.
    """
    if not isinstance(body, dict) or not isinstance(body.get("prices"), list):
        raise ImportFailedError(coin, "market chart answer has no 'prices' list")

    caps = {
        point[0]: point[1] for point in body.get("market_caps") or [] if _is_pair(point)
    }
    observations: list[Observation] = []
    for point in body["prices"]:
        observation = _chart_observation(point, caps, fetched_at)
        if observation is not None:
            observations.append(observation)
    rejected = len(body["prices"]) - len(observations)
    if rejected:
        log.warning("import_points_rejected", coin=coin, points=rejected)

    return _quotes(observations, coin, vs_currency, fetched_at), rejected


def _csv_observation(row: dict[str, str], now: datetime) -> Observation | None:
    try:
        moment = datetime.strptime(row["snapped_at"], SNAPPED_AT_FORMAT)
        price = _number(row["price"])
        market_cap = _number(row.get("market_cap") or "0")
    except (KeyError, TypeError, ValueError):
        return None

    return _checked(moment.replace(tzinfo=UTC), price, market_cap, now)


def _number(text: str) -> float:
    # float() also takes "1_000" and surrounding spaces; an export has neither.
    if "_" in text or text != text.strip():
        raise ValueError(f"not a plain number: {text!r}")
    return float(text)


def _is_pair(point: Any) -> bool:
    return isinstance(point, list) and len(point) == 2


def _chart_observation(
    point: Any, caps: dict[Any, Any], now: datetime
) -> Observation | None:
    if not _is_pair(point):
        return None
    epoch_ms, price = point
    cap = caps.get(epoch_ms)
    if not all(_is_number(value) for value in (epoch_ms, price)):
        return None
    try:
        moment = datetime.fromtimestamp(epoch_ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None

    return _checked(moment, price, cap if _is_number(cap) else 0.0, now)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _checked(
    moment: datetime, price: float, market_cap: float, now: datetime
) -> Observation | None:
    # A quote from the future would stay the coin's latest until then.
    if not plausible_observed_at(moment, now):
        return None
    if not (math.isfinite(price) and 0 < price < MAX_PRICE):
        return None
    if not math.isfinite(market_cap) or market_cap < 0:
        return None

    # CoinGecko reports an unknown market cap as 0.
    return moment, float(price), float(market_cap) or None


def _quotes(
    observations: list[Observation], coin: str, vs: str, fetched_at: datetime
) -> list[Quote]:
    observations = sorted(observations)
    times = [moment for moment, _, _ in observations]
    quotes = []
    for moment, price, market_cap in observations:
        before = _price_near(observations, times, moment - DAY)
        change = (price - before) / before * 100 if before else None
        if change is not None and not math.isfinite(change):
            # A price that rose from nearly nothing: no usable percentage.
            change = None
        quotes.append(Quote(coin, vs, price, market_cap, change, moment, fetched_at))

    return quotes


def _price_near(
    observations: list[Observation], times: list[datetime], moment: datetime
) -> float | None:
    index = bisect.bisect_left(times, moment)
    candidates = [i for i in (index - 1, index) if 0 <= i < len(times)]
    if not candidates:
        return None
    nearest = min(candidates, key=lambda i: abs(times[i] - moment))
    if abs(times[nearest] - moment) > CHANGE_TOLERANCE:
        return None

    return observations[nearest][1]


def chunks(quotes: Sequence[Quote], size: int = BATCH_QUOTES) -> Iterator[list[Quote]]:
    """`quotes` in lists of at most `size`, in order."""
    for start in range(0, len(quotes), size):
        yield list(quotes[start : start + size])


async def publish_history(
    nats: NatsClient,
    quotes: Sequence[Quote],
    timeout_s: float,
    progress: bool = True,
) -> ImportReport:
    """Hand `quotes` to the Publisher in batches, as the Fetcher does.

    Returns:
        How many quotes the stream took, and how many it already held.

    Raises:
        ImportFailedError: the Publisher did not take a batch.
    """
    report = ImportReport(read=len(quotes))
    with tqdm(
        total=len(quotes), unit="quote", desc="published", disable=not progress
    ) as bar:
        for batch in chunks(quotes):
            answer = await _hand_on(nats, batch, timeout_s)
            report.published += int(answer.get("published", 0))
            report.duplicates += int(answer.get("duplicates", 0))
            bar.update(len(batch))

    return report


async def _hand_on(
    nats: NatsClient, batch: list[Quote], timeout_s: float
) -> dict[str, Any]:
    payload = encode_quotes(batch)
    for attempt in range(1, HANDOFF_ATTEMPTS + 1):
        try:
            reply = await nats.request(subjects.QUOTES, payload, timeout=timeout_s)
        except (NatsTimeoutError, NoRespondersError) as exc:
            log.warning("import_retry", attempt=attempt, error=type(exc).__name__)
            await anyio.sleep(attempt)
            continue
        answer = loads(reply.data)
        if isinstance(answer, dict) and answer.get("ok"):
            return answer
        raise ImportFailedError(batch[0].coin, f"publisher refused: {answer!r}")

    raise ImportFailedError(batch[0].coin, "no publisher answered")


async def wait_until_stored(
    nats: NatsClient, expected: int, timeout_s: float, progress: bool = True
) -> None:
    """Wait until the Store has written every price event in the stream.

    Raises:
        ImportFailedError: events were still unwritten after `timeout_s`.
    """
    js = nats.jetstream()
    with tqdm(total=expected, unit="quote", desc="stored", disable=not progress) as bar:
        with anyio.move_on_after(timeout_s):
            while True:
                info = await js.consumer_info(
                    subjects.PRICE_STREAM, subjects.STORE_CONSUMER
                )
                waiting = (info.num_pending or 0) + (info.num_ack_pending or 0)
                bar.update(max(0, expected - waiting) - bar.n)
                if waiting == 0:
                    return
                await anyio.sleep(STORE_POLL_S)

    raise ImportFailedError("*", f"store still writing after {timeout_s}s")
