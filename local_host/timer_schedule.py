"""Timer schedules: NCRONTAB (``sec min hour day month day-of-week``) or a constant TimeSpan interval."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from local_host.host_config import HostConfigError, parse_timespan


class ScheduleError(ValueError):
    """A timer schedule that is neither a 6-field NCRONTAB expression nor a TimeSpan."""


def schedule_timezone(environ: dict[str, str] | None = None) -> tzinfo:
    """UTC unless WEBSITE_TIME_ZONE names an IANA zone (as on Azure)."""
    name = (environ if environ is not None else os.environ).get("WEBSITE_TIME_ZONE")
    if not name:
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ScheduleError(f"WEBSITE_TIME_ZONE={name!r} is not a known IANA time zone") from error


@dataclass(frozen=True)
class Schedule:
    expression: str
    interval: timedelta | None = None  # set for TimeSpan schedules
    zone: tzinfo = UTC

    @classmethod
    def parse(cls, expression: str, zone: tzinfo = UTC) -> Schedule:
        text = " ".join(expression.split())
        fields = text.split(" ")
        if len(fields) == 1 and ":" in text:
            try:
                seconds = parse_timespan(text)
            except HostConfigError as error:
                raise ScheduleError(f"invalid timer schedule {expression!r}: {error}") from error
            if seconds <= 0:
                raise ScheduleError(f"timer interval must be positive: {expression!r}")
            return cls(text, interval=timedelta(seconds=seconds), zone=zone)
        if len(fields) != 6:
            raise ScheduleError(
                f"invalid timer schedule {expression!r}: NCRONTAB needs 6 fields "
                "(second minute hour day month day-of-week)"
            )
        if not croniter.is_valid(text, second_at_beginning=True):
            raise ScheduleError(f"invalid NCRONTAB expression {expression!r}")
        return cls(text, zone=zone)

    def next_after(self, moment: datetime) -> datetime:
        """The first occurrence strictly after ``moment`` (an aware datetime), in UTC."""
        if moment.tzinfo is None:
            raise ValueError("moment must be timezone-aware")
        if self.interval is not None:
            return (moment + self.interval).astimezone(UTC)
        local = moment.astimezone(self.zone)
        upcoming = croniter(self.expression, local, second_at_beginning=True).get_next(datetime)
        assert isinstance(upcoming, datetime)
        return upcoming.astimezone(UTC)

    def typical_interval(self, moment: datetime) -> timedelta:
        """Gap between the next two occurrences; Azure turns the schedule monitor on when it is ≥ 1 minute."""
        if self.interval is not None:
            return self.interval
        first = self.next_after(moment)
        return self.next_after(first) - first
