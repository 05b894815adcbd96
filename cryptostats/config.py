"""Settings: defaults, then `config.toml`, then environment, then flags.

Every key of `config.toml` at the repository root is described there; the
defaults below and that file must agree (a test checks it).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pymongo.errors import PyMongoError
from pymongo.uri_parser import parse_uri

from cryptostats.errors import ConfigError

# Start order: each actor after those it sends to, so nothing it sends is
# lost while they subscribe; the supervisor stops them in reverse.
ACTOR_NAMES = ("store", "publisher", "fetcher", "ticker", "http_api")
COIN_PATTERN = r"^[a-z0-9-]{1,64}$"
COIN_RE = re.compile(COIN_PATTERN)
VS_CURRENCY_PATTERN = r"^[a-z]{2,10}$"
VS_CURRENCY_RE = re.compile(VS_CURRENCY_PATTERN)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceSettings(_Section):
    data_dir: Path = Path("./data")
    actors: tuple[str, ...] = ACTOR_NAMES

    @field_validator("data_dir", mode="before")
    @classmethod
    def _named_data_dir(cls, data_dir: Any) -> Any:
        # Path("") is the current directory: say "." to mean it.
        if isinstance(data_dir, str) and not data_dir.strip():
            raise ValueError("data_dir must not be empty")
        return data_dir

    @field_validator("data_dir")
    @classmethod
    def _directory(cls, data_dir: Path) -> Path:
        if data_dir.exists() and not data_dir.is_dir():
            raise ValueError(f"data_dir is not a directory: {str(data_dir)!r}")
        return data_dir

    @field_validator("actors")
    @classmethod
    def _known_actors(cls, actors: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(actors) - set(ACTOR_NAMES))
        if unknown or not actors:
            raise ValueError(f"actors must be among {ACTOR_NAMES}, got {actors}")
        return tuple(name for name in ACTOR_NAMES if name in actors)


class ScheduleSettings(_Section):
    cron: str = "*/15 * * * *"
    tick_at_start: StrictBool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if not is_valid_cron(cron):
            raise ValueError(f"not a cron expression: {cron!r}")
        return cron


class CoinSettings(_Section):
    ids: tuple[str, ...] = ("bitcoin", "ethereum", "polygon-ecosystem-token")
    # CoinGecko's currency codes are lowercase letters (usd, eur, btc, sats).
    vs_currency: str = Field(default="usd", pattern=VS_CURRENCY_PATTERN)
    # Former id -> the id CoinGecko uses now.
    aliases: dict[str, str] = Field(
        default_factory=lambda: {"matic-network": "polygon-ecosystem-token"}
    )

    @field_validator("ids")
    @classmethod
    def _valid_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        if not ids:
            raise ValueError("at least one coin id is required")
        for coin in ids:
            _check_coin(coin)
        return tuple(dict.fromkeys(ids))

    @field_validator("aliases")
    @classmethod
    def _valid_aliases(cls, aliases: dict[str, str]) -> dict[str, str]:
        for old, new in aliases.items():
            _check_coin(old)
            _check_coin(new)
            if new in aliases:
                raise ValueError(f"alias target {new!r} is itself an alias")
        return aliases

    def canonical(self, coin: str) -> str:
        """The id CoinGecko uses now for `coin` (itself unless an alias)."""
        return self.aliases.get(coin, coin)

    @property
    def tracked(self) -> tuple[str, ...]:
        """The canonical ids of `ids`, in order, without duplicates."""
        return tuple(dict.fromkeys(self.canonical(coin) for coin in self.ids))


def _check_coin(coin: str) -> None:
    if not COIN_RE.fullmatch(coin):
        raise ValueError(f"coin id must match {COIN_PATTERN}: {coin!r}")


class Plan(enum.StrEnum):
    """A CoinGecko API plan: which host and which key header it uses."""

    PUBLIC = "public"
    DEMO = "demo"
    PRO = "pro"


PUBLIC_ROOT = "https://api.coingecko.com/api/v3"
PRO_ROOT = "https://pro-api.coingecko.com/api/v3"
PLAN_ROOTS = {Plan.PUBLIC: PUBLIC_ROOT, Plan.DEMO: PUBLIC_ROOT, Plan.PRO: PRO_ROOT}
PLAN_KEY_HEADERS = {Plan.DEMO: "x-cg-demo-api-key", Plan.PRO: "x-cg-pro-api-key"}
# Calls per minute each plan allows (the public one varies; 5 is its floor).
PLAN_CALLS_PER_MINUTE = {Plan.PUBLIC: 5, Plan.DEMO: 30, Plan.PRO: 500}


class CoinGeckoSettings(_Section):
    plan: Plan = Plan.PUBLIC
    # Empty: the plan's host.
    base_url: str = ""
    api_key: str = Field(default="", repr=False)
    timeout_s: float = Field(default=10.0, gt=0)
    attempts: StrictInt = Field(default=3, ge=1, le=10)
    backoff_initial_s: float = Field(default=1.0, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    # 0: the plan's limit (PLAN_CALLS_PER_MINUTE).
    calls_per_minute: float = Field(default=0, ge=0)
    max_url_chars: StrictInt = Field(default=4000, ge=256, le=65536)

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, base_url: str) -> str:
        if base_url:
            url = urlsplit(base_url)
            spaced = any(char.isspace() for char in base_url)
            if url.scheme not in ("http", "https") or not url.hostname or spaced:
                raise ValueError(
                    f"not an http(s) URL with a host and no spaces: {base_url!r}"
                    " (leave it empty for the plan's host)"
                )
        return base_url

    @model_validator(mode="after")
    def _key_fits_plan(self) -> CoinGeckoSettings:
        # The messages name the setting, never its value.
        if self.plan is Plan.PUBLIC and self.api_key:
            raise ValueError(
                "an API key is set but coingecko.plan is 'public':"
                " set plan to 'demo' or 'pro'"
            )
        if self.plan is not Plan.PUBLIC and not self.api_key:
            raise ValueError(
                f"coingecko.plan {self.plan.value!r} needs an API key"
                " (COINGECKO_API_KEY or coingecko.api_key)"
            )
        return self

    @property
    def root_url(self) -> str:
        """The API root calls go to: `base_url`, else the plan's host."""
        return (self.base_url or PLAN_ROOTS[self.plan]).rstrip("/")

    @property
    def key_header(self) -> str | None:
        """The header that carries the key on this plan; None on public."""
        return PLAN_KEY_HEADERS.get(self.plan)

    @property
    def call_budget(self) -> float:
        """Calls allowed per minute: the setting, else the plan's limit."""
        return self.calls_per_minute or PLAN_CALLS_PER_MINUTE[self.plan]


NATS_SCHEMES = ("nats", "tls", "ws", "wss")
# JetStream keeps ages in nanoseconds, in a signed 64-bit integer.
MAX_STREAM_AGE_S = 100 * 365 * 24 * 3600


class NatsSettings(_Section):
    # One server, or several separated by commas (seeds of a cluster).
    url: str = ""
    connect_wait_s: float = Field(default=30.0, gt=0)
    request_timeout_s: float = Field(default=5.0, gt=0)
    stream_max_age_s: float = Field(default=30 * 24 * 3600, gt=0, le=MAX_STREAM_AGE_S)
    duplicate_window_s: float = Field(default=24 * 3600, gt=0)

    @field_validator("url")
    @classmethod
    def _nats_urls(cls, url: str) -> str:
        for server in nats_servers(url):
            try:
                parts = urlsplit(server)
                usable = parts.scheme in NATS_SCHEMES and bool(parts.hostname)
                parts.port  # noqa: B018 - raises ValueError when out of range
            except ValueError:
                usable = False
            if not usable:
                raise ValueError(
                    f"not a {'/'.join(NATS_SCHEMES)} URL with a host and a"
                    f" valid port: {server!r}"
                )
        return url

    @model_validator(mode="after")
    def _window_within_age(self) -> NatsSettings:
        # JetStream refuses a duplicate window longer than the stream keeps.
        if self.duplicate_window_s > self.stream_max_age_s:
            raise ValueError(
                "nats.duplicate_window_s must not exceed nats.stream_max_age_s"
                f" ({self.duplicate_window_s} vs {self.stream_max_age_s})"
            )
        return self


def nats_servers(url: str) -> list[str]:
    """The server URLs of a `nats.url` setting (none when it is empty)."""
    return [server.strip() for server in url.split(",") if server.strip()]


class MongoSettings(_Section):
    uri: str = ""
    # MongoDB refuses names with spaces, dots, slashes, quotes or '$'.
    database: str = Field(default="cryptostats", pattern=r"^[A-Za-z0-9_-]{1,63}$")
    recent_prices: StrictInt = Field(default=1000, ge=2, le=100_000)
    query_timeout_s: float = Field(default=1.0, gt=0)

    @field_validator("uri")
    @classmethod
    def _mongo_uri(cls, uri: str) -> str:
        if uri.startswith("mongodb+srv://"):
            # Checking it would look the SRV record up: leave it to the driver.
            return uri
        if uri:
            try:
                parse_uri(uri)
            except (PyMongoError, ValueError, OSError) as exc:
                # OSError: a file the URI names (tlsCAFile) cannot be read.
                raise ValueError(f"not a usable MongoDB URI ({exc}): {uri!r}") from None
        return uri


class HttpSettings(_Section):
    # An empty host would listen on every interface: say 0.0.0.0 to mean it.
    host: str = Field(default="127.0.0.1", min_length=1)
    # 0 picks a free port (logged in `http_listening`).
    port: StrictInt = Field(default=3000, ge=0, le=65535)
    query_timeout_s: float = Field(default=2.0, gt=0)
    access_log: StrictBool = True


class SupervisorSettings(_Section):
    restart_budget: StrictInt = Field(default=5, ge=0)
    budget_window_s: float = Field(default=60.0, gt=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=15.0, gt=0)


class Settings(_Section):
    """All settings of one cryptostats process."""

    service: ServiceSettings = ServiceSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    coins: CoinSettings = CoinSettings()
    coingecko: CoinGeckoSettings = CoinGeckoSettings()
    nats: NatsSettings = NatsSettings()
    mongo: MongoSettings = MongoSettings()
    http: HttpSettings = HttpSettings()
    supervisor: SupervisorSettings = SupervisorSettings()

    @model_validator(mode="after")
    def _store_answers_before_http_gives_up(self) -> Settings:
        # With both in one process: a Store slower than HttpApi's patience
        # turns "database unavailable" into a bare store timeout. The
        # driver looks for a returning server every 0.5 s.
        actors = set(self.service.actors)
        if {"store", "http_api"} <= actors and (
            self.mongo.query_timeout_s + 0.5 > self.http.query_timeout_s
        ):
            raise ValueError(
                "mongo.query_timeout_s must be at least 0.5 s below"
                f" http.query_timeout_s ({self.mongo.query_timeout_s}"
                f" vs {self.http.query_timeout_s})"
            )
        return self


# Environment variable -> (section, key).
ENVIRONMENT = {
    "MONGO_URI": ("mongo", "uri"),
    "NATS_URL": ("nats", "url"),
    "COINGECKO_PLAN": ("coingecko", "plan"),
    "COINGECKO_API_KEY": ("coingecko", "api_key"),
    "COINGECKO_BASE_URL": ("coingecko", "base_url"),
}


def is_valid_cron(cron: str) -> bool:
    """True for a 5-field cron expression, or 6 fields with seconds first."""
    fields = len(cron.split())
    if fields not in (5, 6):
        return False

    return bool(croniter.is_valid(cron, second_at_beginning=fields == 6))


def load_settings(
    path: Path | None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Settings:
    """Read settings from `path` (optional), the environment and flags.

    Args:
        path: a TOML file; None reads no file.
        environ: the environment; defaults to `os.environ`.
        overrides: values from flags, `{section: {key: value}}`; win over all.

    Raises:
        ConfigError: the file cannot be read or a value is invalid.
    """
    raw = _read_toml(path) if path is not None else {}
    environ = os.environ if environ is None else environ

    for variable, (section, key) in ENVIRONMENT.items():
        if environ.get(variable):
            raw.setdefault(section, {})[key] = environ[variable]

    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update(values)

    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            return tomllib.load(file)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    # A value may come from the file, the environment or a flag.
    where = f" (from {path}, the environment or flags)" if path else ""
    problems = [_problem(error) for error in exc.errors()]
    return f"invalid settings{where}: " + "; ".join(problems)


def _problem(error: Any) -> str:
    message = error["msg"].removeprefix("Value error, ")
    key = ".".join(str(part) for part in error["loc"])
    # A check across sections names its keys in the message itself.
    return f"{key}: {message}" if key else message
