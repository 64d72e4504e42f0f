"""NCRONTAB (6-field, seconds first) and TimeSpan timer schedules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from local_host.timer_schedule import Schedule, ScheduleError, schedule_timezone


def at(*parts: int) -> datetime:
    return datetime(*parts, tzinfo=UTC)  # type: ignore[misc, arg-type]


@pytest.mark.parametrize(
    ("expression", "moment", "expected"),
    [
        ("*/30 * * * * *", at(2024, 1, 1, 0, 0, 10), at(2024, 1, 1, 0, 0, 30)),
        ("*/30 * * * * *", at(2024, 1, 1, 0, 0, 30), at(2024, 1, 1, 0, 1, 0)),
        ("0 */5 * * * *", at(2024, 1, 1, 0, 3, 0), at(2024, 1, 1, 0, 5, 0)),
        ("0 0 * * * *", at(2024, 1, 1, 10, 0, 0), at(2024, 1, 1, 11, 0, 0)),
        ("0 30 9 * * 1-5", at(2024, 1, 6, 12, 0, 0), at(2024, 1, 8, 9, 30, 0)),  # Saturday -> Monday
        ("0 0 0 1 * *", at(2024, 1, 15, 0, 0, 0), at(2024, 2, 1, 0, 0, 0)),
        ("5 * * * * *", at(2024, 1, 1, 0, 0, 5, 500000), at(2024, 1, 1, 0, 1, 5)),
    ],
)
def test_next_occurrence(expression: str, moment: datetime, expected: datetime) -> None:
    assert Schedule.parse(expression).next_after(moment) == expected


def test_next_occurrence_is_in_utc_for_a_time_zone() -> None:
    schedule = Schedule.parse("0 0 9 * * *", ZoneInfo("Europe/Paris"))
    assert schedule.next_after(at(2024, 1, 1, 0, 0, 0)) == at(2024, 1, 1, 8, 0, 0)
    assert schedule.next_after(at(2024, 7, 1, 0, 0, 0)) == at(2024, 7, 1, 7, 0, 0)


def test_timespan_schedule() -> None:
    schedule = Schedule.parse("00:00:15")
    assert schedule.interval == timedelta(seconds=15)
    assert schedule.next_after(at(2024, 1, 1)) == at(2024, 1, 1, 0, 0, 15)


@pytest.mark.parametrize("expression", ["*/5 * * * *", "* * * * * * *", "61 * * * * *", "bad", "00:00:00"])
def test_invalid_schedules(expression: str) -> None:
    with pytest.raises(ScheduleError):
        Schedule.parse(expression)


def test_typical_interval() -> None:
    assert Schedule.parse("*/2 * * * * *").typical_interval(at(2024, 1, 1)) == timedelta(seconds=2)
    assert Schedule.parse("0 */5 * * * *").typical_interval(at(2024, 1, 1)) == timedelta(minutes=5)


def test_next_after_requires_aware_datetime() -> None:
    with pytest.raises(ValueError):
        Schedule.parse("* * * * * *").next_after(datetime(2024, 1, 1))


def test_schedule_timezone() -> None:
    assert schedule_timezone({}) is UTC
    assert schedule_timezone({"WEBSITE_TIME_ZONE": "Europe/Paris"}) == ZoneInfo("Europe/Paris")
    with pytest.raises(ScheduleError):
        schedule_timezone({"WEBSITE_TIME_ZONE": "Not/AZone"})
