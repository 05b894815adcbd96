"""Settings: defaults, then `config.toml`, then environment, then flags.

Every key of `config.toml` at the repository root is described there; the
defaults below and that file must agree (a test checks it).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cryptostats.errors import ConfigError

ACTOR_NAMES = ("ticker", "fetcher", "publisher", "store", "http_api")
COIN_PATTERN = r"^[a-z0-9-]{1,64}$"
COIN_RE = re.compile(COIN_PATTERN)


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ServiceSettings(_Section):
    data_dir: Path = Path("./data")
    actors: tuple[str, ...] = ACTOR_NAMES

    @field_validator("actors")
    @classmethod
    def _known_actors(cls, actors: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(actors) - set(ACTOR_NAMES))
        if unknown or not actors:
            raise ValueError(f"actors must be among {ACTOR_NAMES}, got {actors}")
        return tuple(name for name in ACTOR_NAMES if name in actors)


class ScheduleSettings(_Section):
    cron: str = "*/15 * * * *"
    tick_at_start: bool = True

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, cron: str) -> str:
        if not is_valid_cron(cron):
            raise ValueError(f"not a cron expression: {cron!r}")
        return cron


class CoinSettings(_Section):
    ids: tuple[str, ...] = ("bitcoin", "ethereum", "polygon-ecosystem-token")
    vs_currency: str = "usd"

    @field_validator("ids")
    @classmethod
    def _valid_ids(cls, ids: tuple[str, ...]) -> tuple[str, ...]:
        if not ids:
            raise ValueError("at least one coin id is required")
        for coin in ids:
            if not COIN_RE.fullmatch(coin):
                raise ValueError(f"coin id must match {COIN_PATTERN}: {coin!r}")
        return tuple(dict.fromkeys(ids))


class CoinGeckoSettings(_Section):
    base_url: str = "https://api.coingecko.com/api/v3"
    api_key: str = Field(default="", repr=False)
    timeout_s: float = Field(default=10.0, gt=0)
    attempts: int = Field(default=3, ge=1, le=10)


class NatsSettings(_Section):
    url: str = ""
    request_timeout_s: float = Field(default=5.0, gt=0)
    stream_max_age_s: float = Field(default=30 * 24 * 3600, gt=0)
    duplicate_window_s: float = Field(default=24 * 3600, gt=0)


class MongoSettings(_Section):
    uri: str = ""
    database: str = "cryptostats"
    recent_prices: int = Field(default=1000, ge=2, le=100_000)


class HttpSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=3000, ge=0, le=65535)
    query_timeout_s: float = Field(default=2.0, gt=0)


class SupervisorSettings(_Section):
    restart_budget: int = Field(default=5, ge=0)
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


# Environment variable -> (section, key).
ENVIRONMENT = {
    "MONGO_URI": ("mongo", "uri"),
    "NATS_URL": ("nats", "url"),
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
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = f" in {path}" if path else ""
    problems = [
        f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
        for error in exc.errors()
    ]
    return f"invalid settings{where}: " + "; ".join(problems)
