"""``Crontab``: a cron-like specification in Python values, with ``Weekday`` and ``Month``;
``Crontab.parse`` reads the five fields of a cron string."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, fields
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


@dataclass(frozen=True, repr=False)
class Crontab:
    """When a schedule is due, in its time zone: each field one value, a tuple of values, or
    ``None`` for every value. ``hour`` and ``minute`` default to 0: ``Crontab(weekday=
    Weekday.MONDAY, hour=9)`` is every Monday at 09:00.

    A date matches when *every* field given matches (``Crontab(day=13, weekday=Weekday.FRIDAY)``
    is each Friday the 13th) — unlike cron, which runs when either the day or the weekday
    matches. ``day_or_weekday=True`` selects cron's rule: when ``day`` and ``weekday`` are both
    given, a date matches if either does. Checked when constructed:
    ``InvalidScheduleSpecificationError``.
    """

    month: Field = None
    day: Field = None
    weekday: Field = None
    hour: Field = 0
    minute: Field = 0
    day_or_weekday: bool = False

    @classmethod
    def parse(cls, text: str) -> Crontab:
        """The ``Crontab`` of a standard five-field cron string, ``"*/5 9-17 * * 1-5"``: minute,
        hour, day of month, month (1-12 or ``jan``-``dec``), day of week (0-7 or
        ``sun``-``sat``, 0 and 7 both Sunday). Each field is ``*``, a value, a range ``a-b``, a
        step ``*/n`` or ``a-b/n``, or a comma-separated list of them.

        With cron's meaning: when the day of month and the day of week are both restricted
        (neither starts with ``*``), a date matches if either does (``day_or_weekday``).
        ``InvalidScheduleSpecificationError`` naming the field and the value otherwise.
        """
        if not isinstance(text, str):
            raise InvalidScheduleSpecificationError(f"a cron string is text, not {text!r}")
        parts = text.split()
        if len(parts) != len(CRON_FIELDS):
            raise InvalidScheduleSpecificationError(
                f"cron {text!r} has {len(parts)} fields: give 5 (minute hour day-of-month month "
                "day-of-week)"
            )
        found: dict[str, Field] = {}
        for (name, label, low, high, names), part in zip(CRON_FIELDS, parts, strict=True):
            given = _cron_field(text, label, part, low, high, names)
            if given is not None and name == "weekday":  # cron: Sunday 0 or 7; Weekday: Monday 0
                given = tuple(sorted({(day - 1) % 7 for day in given}))
            found[name] = given[0] if given is not None and len(given) == 1 else given
        # cron's rule (crontab(5)): a field starting with "*" leaves the date to the other one
        either = not parts[2].startswith("*") and not parts[4].startswith("*")
        try:
            return cls(**found, day_or_weekday=either)
        except InvalidScheduleSpecificationError as exc:
            raise InvalidScheduleSpecificationError(f"cron {text!r}: {exc}") from None

    def __post_init__(self) -> None:
        for name in RANGES:
            values(self, name)
        if not isinstance(self.day_or_weekday, bool):
            raise InvalidScheduleSpecificationError(
                f"Crontab(day_or_weekday=...) is True or False, not {self.day_or_weekday!r}"
            )
        if self.day_or_weekday and self.day is not None and self.weekday is not None:
            return  # every month has each weekday
        months, days = values(self, "month"), values(self, "day")
        if not any(day <= LONGEST_MONTH.get(month, 31) for month in months for day in days):
            raise InvalidScheduleSpecificationError(
                f"{self!r} never matches: no month of {list(months)} has a day {list(days)}"
            )

    def __repr__(self) -> str:
        shown = [f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)]
        if not self.day_or_weekday:  # the value form's repr, as before the flag existed
            shown.pop()
        return f"Crontab({', '.join(shown)})"


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


MONTH_NAMES = {
    name: number
    for number, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"),
        start=1,
    )
}
WEEKDAY_NAMES = {
    name: number for number, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))
}
CRON_FIELDS: tuple[tuple[str, str, int, int, dict[str, int]], ...] = (
    # (Crontab field, its name in cron, lowest, highest, names)
    ("minute", "minute", 0, 59, {}),
    ("hour", "hour", 0, 23, {}),
    ("day", "day of month", 1, 31, {}),
    ("month", "month", 1, 12, MONTH_NAMES),
    ("weekday", "day of week", 0, 7, WEEKDAY_NAMES),
)
_NUMBER = re.compile("[0-9]+")


def _cron_field(
    text: str, label: str, field: str, low: int, high: int, names: dict[str, int]
) -> tuple[int, ...] | None:
    """The values of one field of cron string ``text``, in cron's numbering; ``None`` for ``*``."""
    if field == "*":
        return None

    def bad(why: str) -> InvalidScheduleSpecificationError:
        return InvalidScheduleSpecificationError(f"cron {text!r}: {label} {field!r}: {why}")

    def number(token: str) -> int:
        if _NUMBER.fullmatch(token):
            value = int(token)
        elif token.lower() in names:
            value = names[token.lower()]
        elif names:
            raise bad(f"{token!r} is neither a number nor one of {', '.join(names)}")
        else:
            raise bad(f"{token!r} is not a number")
        if not low <= value <= high:
            raise bad(f"{value} is out of range: {label} is {low} to {high}")
        return value

    found: set[int] = set()
    for item in field.split(","):
        span, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not _NUMBER.fullmatch(step_text) or int(step_text) < 1:
                raise bad(f"step {step_text!r} is not a whole number of at least 1")
            step = int(step_text)
        if span == "*":
            start, end = low, high
        elif "-" in span:
            first, _, last = span.partition("-")
            start, end = number(first), number(last)
            if start > end:
                raise bad(f"range {span!r} runs backwards")
        elif span:
            if slash:
                raise bad(f"a step follows '*' or a range, not {span!r}")
            start = end = number(span)
        else:
            raise bad("an empty value")
        found.update(range(start, end + 1, step))
    return tuple(sorted(found))
