"""When a snapshot policy fires next (CloudStack's schedule strings in the policy's time zone), and the
schedules refused with the parameter named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from strato.errors import InvalidParameter
from strato.services.storage.snapshot_schedule import next_run

FRIDAY = datetime(2026, 12, 4, 2, 30, tzinfo=UTC)  # a Friday


@pytest.mark.parametrize(
    ("interval", "schedule", "zone", "after", "expected"),
    [
        ("HOURLY", "15", "UTC", FRIDAY, datetime(2026, 12, 4, 3, 15, tzinfo=UTC)),
        ("HOURLY", "30", "UTC", FRIDAY, datetime(2026, 12, 4, 3, 30, tzinfo=UTC)),  # strictly after
        ("DAILY", "15:01", "UTC", FRIDAY, datetime(2026, 12, 5, 1, 15, tzinfo=UTC)),
        ("DAILY", "00:09", "Europe/Paris", FRIDAY, datetime(2026, 12, 4, 8, 0, tzinfo=UTC)),  # UTC+1 in winter
        ("WEEKLY", "00:10:1", "UTC", FRIDAY, datetime(2026, 12, 6, 10, 0, tzinfo=UTC)),  # 1 = Sunday
        ("WEEKLY", "30:02:6", "UTC", FRIDAY, datetime(2026, 12, 11, 2, 30, tzinfo=UTC)),  # this Friday has passed
        ("MONTHLY", "00:10:4", "UTC", FRIDAY, datetime(2026, 12, 4, 10, 0, tzinfo=UTC)),
        ("MONTHLY", "00:01:4", "UTC", FRIDAY, datetime(2027, 1, 4, 1, 0, tzinfo=UTC)),  # over the year's end
        # Daylight saving time starts in Paris on 2027-03-28 at 02:00: 03:00 local is then 01:00 UTC.
        (
            "DAILY",
            "00:03",
            "Europe/Paris",
            datetime(2027, 3, 27, 12, 0, tzinfo=UTC),
            datetime(2027, 3, 28, 1, 0, tzinfo=UTC),
        ),
    ],
)
def test_next_run(interval: str, schedule: str, zone: str, after: datetime, expected: datetime) -> None:
    assert next_run(interval, schedule, zone, after) == expected


@pytest.mark.parametrize(
    ("interval", "schedule", "zone", "param"),
    [
        ("HOURLY", "61", "UTC", "schedule"),
        ("DAILY", "10", "UTC", "schedule"),
        ("DAILY", "00:24", "UTC", "schedule"),
        ("WEEKLY", "00:10:8", "UTC", "schedule"),
        ("MONTHLY", "00:10:29", "UTC", "schedule"),
        ("DAILY", "a:b", "UTC", "schedule"),
        ("DAILY", "00:10", "Mars/Olympus", "timezone"),
    ],
)
def test_bad_schedules_name_the_parameter(interval: str, schedule: str, zone: str, param: str) -> None:
    with pytest.raises(InvalidParameter, match=f"Parameter {param}"):
        next_run(interval, schedule, zone, FRIDAY)
