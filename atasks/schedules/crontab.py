"""``Crontab``: a cron-like specification in Python values, with ``Weekday`` and ``Month``."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TypeAlias

from atasks.errors import InvalidScheduleSpecificationError


class Weekday(enum.IntEnum):
    """Days of the week as ``datetime.date.weekday()`` numbers them."""

    MONDAY = 0
    TUESDAY = 1
    WEDNESDAY = 2
    THURSDAY = 3
    FRIDAY = 4
    SATURDAY = 5
    SUNDAY = 6


class Month(enum.IntEnum):
    JANUARY = 1
    FEBRUARY = 2
    MARCH = 3
    APRIL = 4
    MAY = 5
    JUNE = 6
    JULY = 7
    AUGUST = 8
    SEPTEMBER = 9
    OCTOBER = 10
    NOVEMBER = 11
    DECEMBER = 12


Field: TypeAlias = int | tuple[int, ...] | None
"""One value, several (a tuple), or ``None``: every value."""

LONGEST_MONTH = {1: 31, 2: 29, 3: 31, 4: 30, 5: 31, 6: 30, 7: 31, 8: 31, 9: 30, 10: 31, 11: 30}
RANGES = {"month": (1, 12), "day": (1, 31), "weekday": (0, 6), "hour": (0, 23), "minute": (0, 59)}


@dataclass(frozen=True)
class Crontab:
    """When a schedule is due, in its time zone: each field one value, a tuple of values, or
    ``None`` for every value. ``hour`` and ``minute`` default to 0: ``Crontab(weekday=
    Weekday.MONDAY, hour=9)`` is every Monday at 09:00.

    A date matches when *every* field given matches (``Crontab(day=13, weekday=Weekday.FRIDAY)``
    is each Friday the 13th) — unlike cron, which runs when either the day or the weekday
    matches. Checked when constructed: ``InvalidScheduleSpecificationError``.
    """

    month: Field = None
    day: Field = None
    weekday: Field = None
    hour: Field = 0
    minute: Field = 0

    def __post_init__(self) -> None:
        for name in RANGES:
            values(self, name)
        months, days = values(self, "month"), values(self, "day")
        if not any(day <= LONGEST_MONTH.get(month, 31) for month in months for day in days):
            raise InvalidScheduleSpecificationError(
                f"{self!r} never matches: no month of {list(months)} has a day {list(days)}"
            )


def values(crontab: Crontab, name: str) -> tuple[int, ...]:
    """The values of one field, sorted: every value of its range for ``None``."""
    low, high = RANGES[name]
    given = getattr(crontab, name)
    if given is None:
        return tuple(range(low, high + 1))
    items = given if isinstance(given, tuple) else (given,)
    if not items:
        raise InvalidScheduleSpecificationError(
            f"Crontab({name}=()) matches nothing: give a value, several, or None for every one"
        )
    for item in items:
        if isinstance(item, bool) or not isinstance(item, int) or not low <= item <= high:
            raise InvalidScheduleSpecificationError(
                f"Crontab({name}=...) takes whole numbers from {low} to {high} (or a tuple of "
                f"them, or None for every one), not {item!r}"
            )
    return tuple(sorted({int(item) for item in items}))
