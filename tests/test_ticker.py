"""The Ticker's schedule arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime

from cryptostats.actors.ticker import next_tick


def test_the_default_schedule_ticks_on_quarter_hours() -> None:
    after = datetime(2026, 1, 1, 12, 7, 31, tzinfo=UTC)

    assert next_tick("*/15 * * * *", after) == datetime(2026, 1, 1, 12, 15, tzinfo=UTC)


def test_a_six_field_schedule_puts_seconds_first() -> None:
    after = datetime(2026, 1, 1, 12, 7, 31, 500_000, tzinfo=UTC)

    assert next_tick("*/5 * * * * *", after) == datetime(
        2026, 1, 1, 12, 7, 35, tzinfo=UTC
    )


def test_the_next_tick_is_taken_from_the_clock_not_from_the_last_tick() -> None:
    # A tick handled late must not shift every later tick.
    late = datetime(2026, 1, 1, 12, 15, 9, tzinfo=UTC)

    assert next_tick("*/15 * * * *", late) == datetime(2026, 1, 1, 12, 30, tzinfo=UTC)


def test_a_moment_on_the_schedule_is_not_ticked_twice() -> None:
    on_time = datetime(2026, 1, 1, 12, 15, tzinfo=UTC)

    assert next_tick("*/15 * * * *", on_time) == datetime(
        2026, 1, 1, 12, 30, tzinfo=UTC
    )
