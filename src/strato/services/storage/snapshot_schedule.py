"""When a snapshot policy fires next: CloudStack's schedule strings read in the policy's time zone.

HOURLY "MM" (minute of the hour), DAILY "MM:HH", WEEKLY "MM:HH:DD" (DD the day of the week, 1 Sunday to
7 Saturday, as Java's Calendar), MONTHLY "MM:HH:DD" (DD the day of the month, 1-28)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from strato.errors import InvalidParameter

INTERVALS = ("HOURLY", "DAILY", "WEEKLY", "MONTHLY")
INTERVAL_CODES = {name: code for code, name in enumerate(INTERVALS)}
"""CloudStack shows a policy's intervaltype as this number (0 HOURLY ... 3 MONTHLY)."""

_PARTS = {"HOURLY": 1, "DAILY": 2, "WEEKLY": 3, "MONTHLY": 3}


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidParameter(
            f"Parameter timezone: {name!r} is not a known time zone (e.g. UTC, Europe/Paris)"
        ) from None


def parse(interval: str, schedule: str) -> tuple[int, int, int]:
    """(minute, hour, day) of a schedule; InvalidParameter naming the parameter when it is malformed."""
    parts = schedule.split(":")
    want = _PARTS[interval]
    if len(parts) != want or not all(p.isdigit() for p in parts):
        shape = ["MM", "MM:HH", "MM:HH:DD", "MM:HH:DD"][INTERVAL_CODES[interval]]
        raise InvalidParameter(f"Parameter schedule: {schedule!r} is not of the form {shape} for {interval}")
    values = [int(p) for p in parts] + [0] * (3 - want)
    minute, hour, day = values
    if minute > 59 or hour > 23:
        raise InvalidParameter(f"Parameter schedule: {schedule!r} has a minute above 59 or an hour above 23")
    if interval == "WEEKLY" and not 1 <= day <= 7:
        raise InvalidParameter("Parameter schedule: the day of the week of a WEEKLY policy is 1 (Sunday) to 7")
    if interval == "MONTHLY" and not 1 <= day <= 28:
        raise InvalidParameter("Parameter schedule: the day of the month of a MONTHLY policy is 1 to 28")
    return minute, hour, day


def next_run(interval: str, schedule: str, timezone: str, after: datetime) -> datetime:
    """The first instant strictly after `after` that the schedule names, in UTC."""
    minute, hour, day = parse(interval, schedule)
    tz = zone(timezone)
    local = after.astimezone(tz)
    if interval == "HOURLY":
        cand = local.replace(minute=minute, second=0, microsecond=0)
        step = timedelta(hours=1)
    elif interval == "DAILY":
        cand = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        step = timedelta(days=1)
    elif interval == "WEEKLY":
        # Python: Monday 0 .. Sunday 6; CloudStack: Sunday 1 .. Saturday 7.
        target = (day - 2) % 7
        cand = local.replace(hour=hour, minute=minute, second=0, microsecond=0)
        cand += timedelta(days=(target - cand.weekday()) % 7)
        step = timedelta(weeks=1)
    else:
        cand = local.replace(day=day, hour=hour, minute=minute, second=0, microsecond=0)
        while cand <= local:
            year, month = (cand.year + 1, 1) if cand.month == 12 else (cand.year, cand.month + 1)
            cand = cand.replace(year=year, month=month)
        return cand.astimezone(UTC)
    while cand <= local:
        cand += step
    # Wall-clock arithmetic: re-attach the zone so a change of daylight saving time lands on the named hour.
    return cand.replace(tzinfo=tz).astimezone(UTC)
