"""The error types that cryptostats raises."""

from __future__ import annotations


class CryptostatsError(Exception):
    """Base of every error raised by cryptostats."""


class ConfigError(CryptostatsError, ValueError):
    """The configuration file, an environment variable or a flag is invalid."""


class EmbeddedServerError(CryptostatsError, RuntimeError):
    """An embedded server (nats-server or SecantusDB) could not be started."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"embedded {name} failed: {reason}")
        self.name = name
        self.reason = reason


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
