"""The CoinGecko client: batched `/simple/price` calls, retries, validation.

The Fetcher uses it; the history import also reads `/coins/{id}/market_chart`.
Every call goes through a call budget that spaces calls evenly within the
plan's calls per minute and holds them back after a 429. An answer becomes
quotes only after each value is checked; anything doubtful is counted, logged
and dropped, never stored.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit

import aiohttp
import anyio
import structlog
from multidict import CIMultiDictProxy
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
    wait_random,
)

from cryptostats import metrics
from cryptostats.config import CoinGeckoSettings, Plan
from cryptostats.errors import (
    ApiKeyRejectedError,
    CallDeferredError,
    QuoteInvalidError,
    UpstreamError,
    UpstreamRateLimitedError,
    UpstreamStatusError,
    UpstreamUnreachableError,
)
from cryptostats.messages import Quote, plausible_observed_at

log = structlog.get_logger("cryptostats.coingecko")

# No real coin is priced above this; a larger value is a broken answer.
MAX_PRICE = 1e12
SNIPPET_CHARS = 120
# A Retry-After longer than this is taken as this: a broken header must not
# silence the service for days.
MAX_RETRY_AFTER_S = 3600.0
# CoinGecko's `status.error_code` for a key sent to the wrong host.
PRO_KEY_ON_PUBLIC_HOST = 10010
DEMO_KEY_ON_PRO_HOST = 10011
_TAG_RE = re.compile(r"<[^>]*>")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


@dataclass
class FetchResult:
    """What one fetch of a set of coins gave: quotes and what was dropped.

    `failed` coins were in a batch CoinGecko gave no usable answer to;
    `skipped` coins were not asked because the next call had to wait
    `wait_s` seconds, past the deadline.
    """

    quotes: list[Quote] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    failed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    attempts: int = 0
    wait_s: float | None = None


class CallBudget:
    """Spaces calls `60 / calls_per_minute` seconds apart, and holds them
    back until a time CoinGecko asked for (`defer`)."""

    def __init__(
        self,
        calls_per_minute: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self.interval_s = 60.0 / calls_per_minute
        self._clock = clock
        self._sleep = sleep
        self._next_at = -math.inf
        self._not_before = -math.inf
        self._lock = anyio.Lock()

    def defer(self, wait_s: float) -> None:
        """Make no call for `wait_s` seconds from now."""
        self._not_before = max(self._not_before, self._clock() + wait_s)

    def wait_s(self) -> float:
        """How long the next call would wait now."""
        return max(0.0, max(self._next_at, self._not_before) - self._clock())

    async def acquire(self, deadline: float | None = None) -> None:
        """Wait for the next call's turn and take it.

        Args:
            deadline: a `clock()` time; a turn after it is not waited for.

        Raises:
            CallDeferredError: the turn comes after `deadline`; no turn taken.
        """
        async with self._lock:
            turn = max(self._next_at, self._not_before)
            if deadline is not None and turn > deadline:
                raise CallDeferredError(turn - self._clock())

            await self._sleep(max(0.0, turn - self._clock()))
            self._next_at = self._clock() + self.interval_s


def batches(coins: Sequence[str], max_chars: int) -> Iterator[list[str]]:
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


def retry_after_s(value: str | None, now: datetime) -> float | None:
    """Seconds to wait per a Retry-After header: delta-seconds or HTTP-date.

    Returns None for an absent or unreadable header; the result is clamped
    to 0..MAX_RETRY_AFTER_S.
    """
    if value is None:
        return None

    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(text)
    else:
        try:
            moment = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        seconds = (moment - now).total_seconds()

    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def safe_snippet(text: str, secret: str = "", html: bool = False) -> str:
    """A short, printable, single-line extract of an answer for a log line.

    Tags are dropped from HTML; `secret` never appears in the result.
    """
    if html:
        text = _TAG_RE.sub(" ", text)
    text = "".join(char if char.isprintable() else " " for char in text)
    if secret:
        text = text.replace(secret, "[key]")

    return " ".join(text.split())[:SNIPPET_CHARS]


def parse_simple_price(
    body: Any, coins: Sequence[str], vs_currency: str, fetched_at: datetime
) -> FetchResult:
    """Turn a `/simple/price` answer into validated quotes.

    Coins absent from the answer, or present with no price, are `missing`;
    coins with an unusable value are `rejected` with the reason.

    Raises:
        UpstreamStatusError: the answer is not a JSON object.
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
    if not plausible_observed_at(moment, fetched_at):
        raise QuoteInvalidError(coin, f"last_updated_at out of range: {value!r}")

    return moment


def upstream_error_kind(exc: UpstreamError) -> str:
    """A short label for a failed call: rate_limited, server_error, ..."""
    if not isinstance(exc, UpstreamStatusError):
        return "unreachable"
    if exc.status == 429:
        return "rate_limited"
    if exc.status >= 500:
        return "server_error"

    return "bad_answer"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, UpstreamStatusError):
        return exc.transient
    return isinstance(exc, UpstreamUnreachableError)


@dataclass(frozen=True)
class _Answer:
    status: int
    content_type: str
    headers: CIMultiDictProxy[str]
    text: str


class CoinGeckoClient:
    """Fetches quotes from `/simple/price`, in batches, with bounded retries.

    Args:
        settings: plan, key, host, budget and retry settings.
        session: the HTTP session calls go through.
        clock: monotonic seconds; deadlines given to `fetch` use it.
        sleep: how to wait; the budget, 429 waits and backoff use it.
    """

    def __init__(
        self,
        settings: CoinGeckoSettings,
        session: aiohttp.ClientSession,
        clock: Clock = time.monotonic,
        sleep: Sleep = anyio.sleep,
    ) -> None:
        self._settings = settings
        self._session = session
        self._clock = clock
        self._sleep = sleep
        self.budget = CallBudget(settings.call_budget, clock, sleep)
        self._backoff = wait_exponential(
            multiplier=settings.backoff_initial_s, max=settings.backoff_max_s
        ) + wait_random(0, settings.backoff_initial_s)

    @property
    def host(self) -> str:
        """The host calls go to (for messages; never holds credentials)."""
        return urlsplit(self._settings.root_url).hostname or "?"

    async def check_access(self) -> None:
        """Call `/ping` once, so that a rejected key stops the start.

        Any other failure is only logged: the first fetch will tell more.

        Raises:
            ApiKeyRejectedError: the key is wrong, or sent to the wrong host.
        """
        await self.budget.acquire()
        try:
            await self._get("/ping", {})
        except UpstreamRateLimitedError as exc:
            self._note_rate_limit(exc)
        except UpstreamError as exc:
            log.warning("ping_failed", host=self.host, error=str(exc))

    async def fetch(
        self, coins: Sequence[str], vs_currency: str, deadline: float | None = None
    ) -> FetchResult:
        """Fetch and validate quotes of `coins`, batch by batch.

        A batch that gets no usable answer after its retries is counted in
        `failed`; once a call would have to wait past `deadline` (a `clock`
        time), the remaining coins are counted in `skipped`.

        Raises:
            ApiKeyRejectedError: the key is wrong, or sent to the wrong host.
        """
        total = FetchResult()
        pending = list(batches(coins, self._max_ids_chars(vs_currency)))
        while pending:
            batch = pending.pop(0)
            try:
                part = await self._fetch_batch(batch, vs_currency, deadline, total)
            except CallDeferredError as exc:
                total.skipped = batch + [coin for rest in pending for coin in rest]
                total.wait_s = round(exc.wait_s, 3)
                break
            except UpstreamError as exc:
                total.failed += batch
                self._log_failure(exc, len(batch))
                continue
            total.quotes += part.quotes
            total.missing += part.missing
            total.rejected |= part.rejected

        return total

    def _max_ids_chars(self, vs_currency: str) -> int:
        fixed = f"{self._settings.root_url}/simple/price?" + urlencode(
            self._price_params("", vs_currency)
        )
        return max(64, self._settings.max_url_chars - len(fixed))

    @staticmethod
    def _price_params(ids: str, vs_currency: str) -> dict[str, str]:
        return {
            "ids": ids,
            "vs_currencies": vs_currency,
            "include_market_cap": "true",
            "include_24hr_change": "true",
            "include_last_updated_at": "true",
        }

    def _retrying(self) -> AsyncRetrying:
        """The retry policy of every call: bounded attempts, backoff with
        jitter (none after a Retry-After the budget already honours)."""
        return AsyncRetrying(
            stop=stop_after_attempt(self._settings.attempts),
            wait=self._wait_before_retry,
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )

    async def _fetch_batch(
        self,
        coins: list[str],
        vs_currency: str,
        deadline: float | None,
        total: FetchResult,
    ) -> FetchResult:
        retrying = self._retrying()
        params = self._price_params(",".join(coins), vs_currency)
        async for attempt in retrying:
            with attempt:
                await self.budget.acquire(deadline)
                total.attempts += 1
                try:
                    body, fetched_at = await self._get("/simple/price", params)
                except UpstreamRateLimitedError as exc:
                    self._note_rate_limit(exc)
                    raise

        return parse_simple_price(body, coins, vs_currency, fetched_at)

    def _wait_before_retry(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, UpstreamRateLimitedError) and exc.retry_after_s:
            # The budget holds the next call back; waiting here too would
            # wait twice and would not respect the deadline.
            return 0.0

        return float(self._backoff(state))

    def _note_rate_limit(self, exc: UpstreamRateLimitedError) -> None:
        if exc.retry_after_s is not None:
            self.budget.defer(exc.retry_after_s)
        log.warning(
            "rate_limited",
            retry_after_s=exc.retry_after_s,
            wait_s=round(self.budget.wait_s(), 3),
            snippet=exc.snippet,
        )

    def _log_failure(self, exc: UpstreamError, coins: int) -> None:
        metrics.UPSTREAM_ERRORS.labels(kind=upstream_error_kind(exc)).inc()
        if isinstance(exc, UpstreamStatusError):
            log.warning(
                "fetch_failed", coins=coins, status=exc.status, snippet=exc.snippet
            )
        else:
            log.warning("fetch_failed", coins=coins, error=str(exc))

    async def _get(self, path: str, params: dict[str, str]) -> tuple[Any, datetime]:
        answer = await self._request(path, params)
        fetched_at = datetime.now(UTC)

        return self._json_body(answer, fetched_at), fetched_at

    async def _request(self, path: str, params: dict[str, str]) -> _Answer:
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_s)
        try:
            async with self._session.get(
                self._settings.root_url + path,
                params=params,
                headers=self._headers(),
                timeout=timeout,
                allow_redirects=False,
            ) as response:
                text = await response.text(errors="replace")
                return _Answer(
                    response.status, response.content_type, response.headers, text
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachableError(type(exc).__name__) from None

    def _headers(self) -> dict[str, str]:
        headers = {"accept": "application/json"}
        if self._settings.key_header:
            headers[self._settings.key_header] = self._settings.api_key

        return headers

    def _json_body(self, answer: _Answer, now: datetime) -> Any:
        is_json = answer.content_type == "application/json"
        snippet = safe_snippet(answer.text, self._settings.api_key, html=not is_json)
        self._check_key(answer, snippet)
        if answer.status == 429:
            wait_s = retry_after_s(answer.headers.get("retry-after"), now)
            raise UpstreamRateLimitedError(snippet, wait_s)
        if answer.status != 200 or not is_json:
            raise UpstreamStatusError(answer.status, snippet)

        # NaN and Infinity parse as floats here and are rejected per coin.
        try:
            return json.loads(answer.text)
        except ValueError:
            raise UpstreamStatusError(answer.status, snippet) from None

    def _check_key(self, answer: _Answer, snippet: str) -> None:
        code = _error_code(answer.text) if answer.status in (400, 401) else None
        if answer.status == 401 or code in (
            PRO_KEY_ON_PUBLIC_HOST,
            DEMO_KEY_ON_PRO_HOST,
        ):
            raise ApiKeyRejectedError(
                self._settings.plan.value, self.host, answer.status, _advice(code)
            )

    async def market_chart(self, coin: str, vs_currency: str, days: int) -> Any:
        """The JSON body of `/coins/{coin}/market_chart`, unchecked.

        Raises:
            ApiKeyRejectedError: the key is wrong, or sent to the wrong host.
            UpstreamError: no usable answer after the retries.
        """
        retrying = self._retrying()
        params = {"vs_currency": vs_currency, "days": str(days)}
        async for attempt in retrying:
            with attempt:
                await self.budget.acquire()
                try:
                    body, _ = await self._get(f"/coins/{coin}/market_chart", params)
                except UpstreamRateLimitedError as exc:
                    self._note_rate_limit(exc)
                    raise

        return body


def _error_code(text: str) -> int | None:
    try:
        body = json.loads(text)
    except ValueError:
        return None
    status = body.get("status") if isinstance(body, dict) else None
    code = status.get("error_code") if isinstance(status, dict) else None

    return code if isinstance(code, int) else None


def _advice(code: int | None) -> str:
    if code == PRO_KEY_ON_PUBLIC_HOST:
        return (
            f"this is a pro key: set coingecko.plan = {Plan.PRO.value!r}"
            " and leave base_url empty (host pro-api.coingecko.com)"
        )
    if code == DEMO_KEY_ON_PRO_HOST:
        return (
            f"this is a demo key: set coingecko.plan = {Plan.DEMO.value!r}"
            " and leave base_url empty (host api.coingecko.com)"
        )

    return (
        "check COINGECKO_API_KEY; a demo key needs plan 'demo' (host"
        " api.coingecko.com), a pro key plan 'pro' (host pro-api.coingecko.com)"
    )
