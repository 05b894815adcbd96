"""How the Store's queries size their history reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from cryptostats.actors.store_queries import _page
from cryptostats.config import Settings
from tests.conftest import make_settings

LATEST = datetime(2026, 6, 1, tzinfo=UTC)


def settings_with_cron(cron: str) -> Settings:
    # No server is reached: only the schedule and the currency are read.
    return make_settings(
        "nats://127.0.0.1:4222",
        "mongodb://127.0.0.1:27017",
        "http://127.0.0.1:9",
        schedule={"cron": cron},
    )


def test_the_first_window_spans_the_gap_between_the_newest_quotes() -> None:
    # Seeded history every 15 minutes under a yearly schedule: windows a
    # year a quote long would match, and sort, the whole history.
    latest = {"observed_at": LATEST, "gap_s": 900.0}

    page = _page("bitcoin", latest, 10, settings_with_cron("0 0 1 1 *"), None)

    assert page.span_s == 900.0 * 11
    assert page.before == LATEST + timedelta(milliseconds=1)


def test_the_first_window_spans_ticks_when_the_gap_is_longer() -> None:
    # A tick after an outage: the gap says nothing of the history's density.
    latest = {"observed_at": LATEST, "gap_s": 86_400.0}

    page = _page("bitcoin", latest, 10, settings_with_cron("*/15 * * * *"), None)

    assert page.span_s == 900.0 * 11


def test_a_first_quote_windows_by_the_schedule_and_starts_at_before() -> None:
    latest = {"observed_at": LATEST, "gap_s": None}
    before = LATEST - timedelta(days=1)

    page = _page("bitcoin", latest, 5, settings_with_cron("0 * * * *"), before)

    assert page.span_s == 3600.0 * 6
    assert page.before == before
