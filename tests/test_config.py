"""Settings: the shipped config.toml, the environment and flags."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cryptostats.config import Settings, load_settings
from cryptostats.errors import ConfigError
from cryptostats.main import flag_overrides, parse_args
from tests.conftest import REPO


def test_the_shipped_config_file_sets_every_key_to_its_default() -> None:
    path = REPO / "config.toml"
    written = tomllib.loads(path.read_text())

    defaults = Settings().model_dump(mode="json")

    assert load_settings(path, environ={}) == Settings()
    assert {section: set(keys) for section, keys in written.items()} == {
        section: set(keys) for section, keys in defaults.items()
    }


def test_environment_variables_override_the_file() -> None:
    environ = {
        "MONGO_URI": "mongodb://db.example:27017",
        "NATS_URL": "nats://bus.example:4222",
        "COINGECKO_PLAN": "demo",
        "COINGECKO_API_KEY": "secret",
        "COINGECKO_BASE_URL": "http://127.0.0.1:9/api/v3",
    }

    settings = load_settings(REPO / "config.toml", environ=environ)

    assert settings.mongo.uri == "mongodb://db.example:27017"
    assert settings.nats.url == "nats://bus.example:4222"
    assert settings.coingecko.plan == "demo"
    assert settings.coingecko.api_key == "secret"
    assert settings.coingecko.base_url == "http://127.0.0.1:9/api/v3"
    assert "secret" not in repr(settings)


def test_flags_override_the_environment() -> None:
    args = parse_args(
        ["--actors", "store,ticker", "--port", "3100", "--schedule", "*/5 * * * * *"]
    )

    settings = load_settings(None, environ={}, overrides=flag_overrides(args))

    assert settings.service.actors == ("store", "ticker")
    assert settings.http.port == 3100
    assert settings.schedule.cron == "*/5 * * * * *"


@pytest.mark.parametrize(
    ("overrides", "complaint"),
    [
        ({"service": {"actors": ["ticker", "cook"]}}, "service.actors"),
        ({"schedule": {"cron": "every minute"}}, "schedule.cron"),
        ({"coins": {"ids": ["Bitcoin"]}}, "coins.ids"),
        ({"http": {"port": 70000}}, "http.port"),
        ({"nats": {"colour": "blue"}}, "nats.colour"),
        ({"coins": {"vs_currency": ""}}, "coins.vs_currency"),
        ({"coins": {"vs_currency": "US Dollar"}}, "coins.vs_currency"),
        ({"coingecko": {"base_url": "localhost:8080"}}, "coingecko.base_url"),
        ({"coingecko": {"base_url": "ftp://example.com"}}, "coingecko.base_url"),
        ({"coingecko": {"base_url": "http://"}}, "coingecko.base_url"),
        ({"mongo": {"database": "my db"}}, "mongo.database"),
        ({"mongo": {"database": ""}}, "mongo.database"),
        ({"coingecko": {"base_url": "http://h/api v3"}}, "coingecko.base_url"),
        ({"http": {"host": ""}}, "http.host"),
        ({"http": {"port": True}}, "http.port"),
        ({"http": {"port": "3001"}}, "http.port"),
        ({"http": {"port": 3001.0}}, "http.port"),
        ({"http": {"access_log": 1}}, "http.access_log"),
        ({"http": {"access_log": "false"}}, "http.access_log"),
        ({"schedule": {"tick_at_start": "yes"}}, "schedule.tick_at_start"),
        ({"mongo": {"query_timeout_s": 2.0}}, "mongo.query_timeout_s"),
        ({"nats": {"url": "garbage"}}, "nats.url"),
        ({"nats": {"url": "http://127.0.0.1:4222"}}, "nats.url"),
        ({"nats": {"url": "nats://127.0.0.1:99999"}}, "nats.url"),
        ({"nats": {"url": "nats://a:4222,nats://"}}, "nats.url"),
        ({"nats": {"stream_max_age_s": 60.0}}, "nats.duplicate_window_s"),
        ({"nats": {"stream_max_age_s": 1e12}}, "nats.stream_max_age_s"),
        ({"mongo": {"uri": "garbage"}}, "mongo.uri"),
        ({"mongo": {"uri": "mongodb://"}}, "mongo.uri"),
        ({"mongo": {"uri": "mongodb://127.0.0.1:99999"}}, "mongo.uri"),
        (
            {"mongo": {"uri": "mongodb://h/?tls=true&tlsCAFile=/absent.pem"}},
            "mongo.uri",
        ),
        ({"service": {"data_dir": ""}}, "service.data_dir"),
        ({"service": {"data_dir": __file__}}, "service.data_dir"),
    ],
)
def test_an_invalid_setting_is_a_config_error_naming_the_key(
    overrides: dict, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(None, environ={}, overrides=overrides)


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("[coins\nids = 3")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(broken, environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.toml", environ={})


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"[http]\nport = 3001\n# caf\xe9\n")

    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(latin1, environ={})


def test_a_cluster_of_nats_servers_and_a_replica_set_are_accepted() -> None:
    urls = "nats://a.internal:4222, tls://b.internal:4222"
    uri = "mongodb://a.internal,b.internal/?replicaSet=rs0"

    settings = load_settings(None, environ={"NATS_URL": urls, "MONGO_URI": uri})

    assert settings.nats.url == urls
    assert settings.mongo.uri == uri


def test_the_timeouts_of_store_and_http_api_apart_are_not_compared() -> None:
    settings = load_settings(
        None,
        environ={},
        overrides={"service": {"actors": ["store"]}, "mongo": {"query_timeout_s": 5}},
    )

    assert settings.mongo.query_timeout_s == 5
