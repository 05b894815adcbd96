"""The error types that cryptostats raises."""

from __future__ import annotations


class CryptostatsError(Exception):
    """Base of every error raised by cryptostats."""


class ConfigError(CryptostatsError, ValueError):
    """The configuration file, an environment variable or a flag is invalid."""


class ApiKeyRejectedError(ConfigError):
    """CoinGecko refused the API key: a wrong key, or the wrong plan or host.

    The message says which plan and host to use; it never holds the key.
    """

    def __init__(self, plan: str, host: str, status: int, advice: str) -> None:
        super().__init__(
            f"coingecko rejected the api key (http {status}, plan {plan!r},"
            f" host {host}): {advice}"
        )
        self.plan = plan
        self.host = host
        self.status = status
        self.advice = advice


class EmbeddedServerError(CryptostatsError, RuntimeError):
    """An embedded server (nats-server or SecantusDB) could not be started."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"embedded {name} failed: {reason}")
        self.name = name
        self.reason = reason


class DataDirInUseError(ConfigError):
    """Another process runs the embedded servers of this data dir.

    `pid` is that process (None when unknown); the message says what to do.
    """

    def __init__(self, data_dir: str, pid: int | None, advice: str) -> None:
        holder = "another process" if pid is None else f"process {pid}"
        super().__init__(f"data dir {data_dir} is in use by {holder}: {advice}")
        self.data_dir = data_dir
        self.pid = pid
        self.advice = advice


class NatsUnreachableError(CryptostatsError, ConnectionError):
    """No NATS server answered at start within the wait."""

    def __init__(self, url: str, wait_s: float) -> None:
        super().__init__(f"no nats server answered at {url} within {wait_s}s")
        self.url = url
        self.wait_s = wait_s


class QuoteInvalidError(CryptostatsError, ValueError):
    """An upstream value cannot be a quote (missing, non-finite, not positive)."""

    def __init__(self, coin: str, reason: str) -> None:
        super().__init__(f"invalid quote for {coin}: {reason}")
        self.coin = coin
        self.reason = reason


class ActorBudgetExceededError(CryptostatsError, RuntimeError):
    """An actor crashed more often than its restart budget allows."""

    def __init__(self, actor: str, restarts: int, cause: BaseException) -> None:
        super().__init__(
            f"actor {actor} crashed {restarts} times within its budget: {cause!r}"
        )
        self.actor = actor
        self.restarts = restarts
        self.cause = cause


class UpstreamError(CryptostatsError):
    """CoinGecko did not give a usable answer."""


class UpstreamStatusError(UpstreamError):
    """CoinGecko answered with an HTTP error status or a non-JSON page."""

    def __init__(self, status: int, snippet: str) -> None:
        super().__init__(f"coingecko answered http {status}: {snippet!r}")
        self.status = status
        self.snippet = snippet

    @property
    def transient(self) -> bool:
        """True for answers worth retrying (429 and 5xx)."""
        return self.status == 429 or self.status >= 500


class UpstreamUnreachableError(UpstreamError, ConnectionError):
    """CoinGecko could not be reached, or did not answer in time."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"coingecko unreachable: {reason}")
        self.reason = reason


class UpstreamRateLimitedError(UpstreamStatusError):
    """CoinGecko answered 429; `retry_after_s` is its Retry-After, if any."""

    def __init__(self, snippet: str, retry_after_s: float | None) -> None:
        super().__init__(429, snippet)
        self.retry_after_s = retry_after_s


class CallDeferredError(UpstreamError):
    """The next call must wait past the deadline it was given (a 429's wait)."""

    def __init__(self, wait_s: float) -> None:
        super().__init__(f"next coingecko call must wait {wait_s:.1f}s")
        self.wait_s = wait_s


class LatestContendedError(CryptostatsError, RuntimeError):
    """A currency's latest document kept changing under our compare-and-set."""

    def __init__(self, vs_currency: str, attempts: int) -> None:
        super().__init__(
            f"latest document of {vs_currency} changed during {attempts} attempts"
        )
        self.vs_currency = vs_currency
        self.attempts = attempts


class ImportFailedError(CryptostatsError, RuntimeError):
    """A history import could not read its source or hand its quotes on."""

    def __init__(self, coin: str, reason: str) -> None:
        super().__init__(f"history import of {coin} failed: {reason}")
        self.coin = coin
        self.reason = reason
