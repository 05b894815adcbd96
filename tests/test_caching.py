"""Cache-Control until the next tick, and Last-Modified worked out per quote."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptostats.web.caching import Validated, cache_control

EVERY_15_MIN = "*/15 * * * *"


def at(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_max_age_counts_down_to_the_next_tick() -> None:
    first = cache_control(EVERY_15_MIN, at("2026-01-01T12:00:00.500+00:00"))
    later = cache_control(EVERY_15_MIN, at("2026-01-01T12:10:00.500+00:00"))

    assert first == "public, max-age=900"
    assert later == "public, max-age=300"


def test_a_passed_tick_gives_way_to_the_one_after_it() -> None:
    before = cache_control(EVERY_15_MIN, at("2026-01-01T12:14:59.200+00:00"))
    on_it = cache_control(EVERY_15_MIN, at("2026-01-01T12:15:00+00:00"))

    assert before == "public, max-age=1"
    assert on_it == "public, max-age=900"


def test_each_schedule_keeps_its_own_next_tick() -> None:
    now_s = at("2026-01-01T12:05:00+00:00")

    hourly = cache_control("0 * * * *", now_s)
    quarterly = cache_control(EVERY_15_MIN, now_s)

    assert hourly == "public, max-age=3300"
    assert quarterly == "public, max-age=600"


def test_last_modified_is_an_http_date_in_whole_seconds() -> None:
    observed_at = datetime(2024, 12, 3, 21, 17, 48, 750_000, tzinfo=UTC)

    validated = Validated.of(b"{}", observed_at)

    assert validated.last_modified == "Tue, 03 Dec 2024 21:17:48 GMT"
    assert validated.modified_at == observed_at.replace(microsecond=0)


def test_a_clock_set_back_works_the_next_tick_out_again() -> None:
    cache_control(EVERY_15_MIN, at("2026-01-01T12:20:00+00:00"))

    after_the_step = cache_control(EVERY_15_MIN, at("2026-01-01T12:02:00+00:00"))

    assert after_the_step == "public, max-age=780"
