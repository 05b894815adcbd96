"""The CoinGecko client: batched `/simple/price` calls, retries, validation.

Only the Fetcher uses it. An answer becomes quotes only after each value is
checked; anything doubtful is counted, logged and dropped, never stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential_jitter,
)

from cryptostats.config import CoinGeckoSettings
from cryptostats.errors import (
    QuoteInvalidError,
    UpstreamStatusError,
    UpstreamUnreachableError,
)
from cryptostats.messages import Quote

log = structlog.get_logger("cryptostats.coingecko")

# Keeps each request line well under the 8 KiB that servers commonly accept.
MAX_IDS_CHARS = 4000
# No real coin is priced above this; a larger value is a broken answer.
MAX_PRICE = 1e12
EARLIEST = datetime(2009, 1, 3, tzinfo=UTC)
SNIPPET_CHARS = 120


@dataclass
class FetchResult:
    """What one fetch of a set of coins gave: quotes and what was dropped."""

    quotes: list[Quote] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    attempts: int = 0


def batches(
    coins: Sequence[str], max_chars: int = MAX_IDS_CHARS
) -> Iterator[list[str]]:
    """Split coin ids into batches whose comma-joined length fits `max_chars`."""
    batch: list[str] = []
    length = 0
    for coin in coins:
        if batch and length + 1 + len(coin) > max_chars:
            yield batch
            batch, length = [], 0
        length += len(coin) + (1 if batch else 0)
        batch.append(coin)
    if batch:
        yield batch


def parse_simple_price(
    body: Any, coins: Sequence[str], vs_currency: str, fetched_at: datetime
) -> FetchResult:
    """Turn a `/simple/price` answer into validated quotes.

    Coins absent from the answer, or present with no price, are `missing`;
    coins with an unusable value are `rejected` with the reason.
    """
    result = FetchResult()
    if not isinstance(body, dict):
        raise UpstreamStatusError(
            200, f"expected a JSON object, got {type(body).__name__}"
        )

    for coin in coins:
        entry = body.get(coin)
        if not isinstance(entry, dict) or entry.get(vs_currency) is None:
            result.missing.append(coin)
            continue
        try:
            result.quotes.append(_quote(coin, entry, vs_currency, fetched_at))
        except QuoteInvalidError as exc:
            result.rejected[coin] = exc.reason

    return result


def _quote(coin: str, entry: dict[str, Any], vs: str, fetched_at: datetime) -> Quote:
    price = _number(coin, "price", entry.get(vs))
    if price is None or not 0 < price < MAX_PRICE:
        raise QuoteInvalidError(coin, f"price out of range: {entry.get(vs)!r}")

    market_cap = _number(coin, "market cap", entry.get(f"{vs}_market_cap"))
    if market_cap is not None and market_cap < 0:
        raise QuoteInvalidError(coin, f"negative market cap: {market_cap!r}")

    return Quote(
        coin=coin,
        vs_currency=vs,
        price=price,
        # CoinGecko reports an unknown market cap as 0.
        market_cap=market_cap or None,
        change_24h=_number(coin, "24h change", entry.get(f"{vs}_24h_change")),
        observed_at=_observed_at(coin, entry.get("last_updated_at"), fetched_at),
        fetched_at=fetched_at,
    )


def _number(coin: str, what: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuoteInvalidError(coin, f"{what} is not a number: {value!r}")
    if not math.isfinite(value):
        raise QuoteInvalidError(coin, f"{what} is not finite: {value!r}")

    return float(value)


def _observed_at(coin: str, value: Any, fetched_at: datetime) -> datetime:
    if value is None:
        return fetched_at.replace(microsecond=0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise QuoteInvalidError(coin, f"last_updated_at is not a number: {value!r}")

    try:
        moment = datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        raise QuoteInvalidError(
            coin, f"last_updated_at out of range: {value!r}"
        ) from None
    if not EARLIEST <= moment <= fetched_at.replace(year=fetched_at.year + 1):
        raise QuoteInvalidError(coin, f"last_updated_at out of range: {value!r}")

    return moment


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamStatusError):
        return exc.transient
    return isinstance(exc, UpstreamUnreachableError)


class CoinGeckoClient:
    """Fetches quotes from `/simple/price`, in batches, with bounded retries."""

    def __init__(
        self, settings: CoinGeckoSettings, session: aiohttp.ClientSession
    ) -> None:
        self._settings = settings
        self._session = session

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self._settings.api_key:
            headers["x-cg-demo-api-key"] = self._settings.api_key
        return headers

    async def fetch(self, coins: Sequence[str], vs_currency: str) -> FetchResult:
        """Fetch and validate quotes of `coins`.

        Raises:
            UpstreamStatusError: an error status or non-JSON answer, after
                the retries that transient ones get.
            UpstreamUnreachableError: no answer, after retries.
        """
        total = FetchResult()
        for batch in batches(coins):
            part = await self._fetch_batch(batch, vs_currency)
            total.quotes += part.quotes
            total.missing += part.missing
            total.rejected |= part.rejected
            total.attempts += part.attempts

        return total

    async def _fetch_batch(self, coins: list[str], vs_currency: str) -> FetchResult:
        attempts = 0
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._settings.attempts),
            wait=wait_exponential_jitter(initial=1, max=30),
            retry=retry_if_exception(_retryable),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                attempts += 1
                body, fetched_at = await self._get_simple_price(coins, vs_currency)

        result = parse_simple_price(body, coins, vs_currency, fetched_at)
        result.attempts = attempts
        return result

    async def _get_simple_price(
        self, coins: list[str], vs_currency: str
    ) -> tuple[Any, datetime]:
        params = {
            "ids": ",".join(coins),
            "vs_currencies": vs_currency,
            "include_market_cap": "true",
            "include_24hr_change": "true",
            "include_last_updated_at": "true",
        }
        url = f"{self._settings.base_url.rstrip('/')}/simple/price"
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        try:
            async with self._session.get(
                url, params=params, headers=self._headers(), timeout=timeout
            ) as response:
                text = await response.text(errors="replace")
                fetched_at = datetime.now(UTC)
                return _json_body(response, text), fetched_at
        except (aiohttp.ClientConnectionError, TimeoutError) as exc:
            raise UpstreamUnreachableError(type(exc).__name__) from exc


def _json_body(response: aiohttp.ClientResponse, text: str) -> Any:
    snippet = " ".join(text[:SNIPPET_CHARS].split())
    if response.status != 200 or response.content_type != "application/json":
        raise UpstreamStatusError(response.status, snippet)

    # NaN and Infinity parse as floats here and are rejected per coin.
    try:
        return json.loads(text)
    except ValueError:
        raise UpstreamStatusError(response.status, snippet) from None
