"""Cron strings: ``Crontab.parse`` and ``@schedule(cron=...)``, with cron's "day or weekday";
next due times from a table, and every way a string can be wrong."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

import atasks
from atasks import Crontab, InvalidScheduleSpecificationError, Weekday, get_schedule, schedule
from atasks.schedules.timing import due_times

UTC = dt.UTC
_namespaces = itertools.count()


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def made(cron: str, **spec: Any) -> atasks.Schedule:
    """The schedule of a fresh atask, in a namespace of its own."""
    ns = f"cron-{next(_namespaces)}"

    async def job() -> None:
        pass

    return get_schedule(schedule(cron=cron, **spec, namespace=ns)(job).name, ns)


NEXT = [  # (cron string, time zone, after, the next due time in UTC)
    # month ends: the 31st never fires in a 30-day month, Feb 29 only in leap years
    ("0 0 31 * *", None, utc(2026, 4, 15), utc(2026, 5, 31)),
    ("0 0 31 * *", None, utc(2026, 1, 31), utc(2026, 3, 31)),
    ("0 12 29 2 *", None, utc(2026, 1, 1), utc(2028, 2, 29, 12)),
    ("0 12 29 feb *", None, utc(2096, 3, 1), utc(2104, 2, 29, 12)),  # 2100 is not a leap year
    ("59 23 31 12 *", None, utc(2026, 12, 31, 23, 59), utc(2027, 12, 31, 23, 59)),
    # both day fields restricted: the 13th OR a Friday (2026-01-01 is a Thursday)
    ("0 0 13 * 5", None, utc(2026, 1, 1), utc(2026, 1, 2)),
    ("0 0 13 * 5", None, utc(2026, 1, 9), utc(2026, 1, 13)),
    ("0 0 13 * 5", None, utc(2026, 1, 13), utc(2026, 1, 16)),
    ("0 0 13 * fri", None, utc(2026, 2, 12), utc(2026, 2, 13)),
    # the 31st or a Monday: February, which has no 31st, still has its Mondays
    ("0 0 31 2 mon", None, utc(2026, 2, 1), utc(2026, 2, 2)),
    # one field starting with "*" leaves the date to the other (AND, as cron does)
    ("0 0 */2 * 1", None, utc(2026, 1, 1), utc(2026, 1, 5)),  # Mondays on odd days
    ("0 0 13 * *", None, utc(2026, 1, 1), utc(2026, 1, 13)),
    ("0 0 * * 5", None, utc(2026, 1, 2), utc(2026, 1, 9)),
    # every five minutes, 09:00 to 17:55, Monday to Friday
    ("*/5 9-17 * * 1-5", None, utc(2026, 1, 5, 12, 3), utc(2026, 1, 5, 12, 5)),
    ("*/5 9-17 * * 1-5", None, utc(2026, 1, 5, 9), utc(2026, 1, 5, 9, 5)),
    ("*/5 9-17 * * 1-5", None, utc(2026, 1, 5, 17, 50), utc(2026, 1, 5, 17, 55)),
    ("*/5 9-17 * * 1-5", None, utc(2026, 1, 2, 17, 55), utc(2026, 1, 5, 9)),  # Fri → Mon
    ("*/5 9-17 * * mon-FRI", None, utc(2026, 1, 3, 10), utc(2026, 1, 5, 9)),  # from a Saturday
    ("*/5 9-17 * * 1-5", "Europe/Berlin", utc(2026, 1, 5, 16, 53), utc(2026, 1, 5, 16, 55)),
    ("*/5 9-17 * * 1-5", "Europe/Berlin", utc(2026, 1, 5, 16, 55), utc(2026, 1, 6, 8)),  # CET
    # Sunday is 0 and 7
    ("0 0 * * 7", None, utc(2026, 1, 1), utc(2026, 1, 4)),
    ("0 0 * * 0", None, utc(2026, 1, 1), utc(2026, 1, 4)),
    ("0 0 * * 5-7", None, utc(2026, 1, 3, 1), utc(2026, 1, 4)),
    # steps and names
    ("0 0 1 */3 *", None, utc(2026, 1, 1), utc(2026, 4, 1)),
    ("10-20/5 0-23/6 * * *", None, utc(2026, 1, 1, 6, 20), utc(2026, 1, 1, 12, 10)),
    ("0 9 1 Jan,JUL *", None, utc(2026, 1, 1, 9), utc(2026, 7, 1, 9)),
    ("0 9 * may-jun/2 sat", None, utc(2026, 1, 1), utc(2026, 5, 2, 9)),
    # time zones, as the value form: 02:30 skipped by spring forward runs at 03:30 local,
    # 02:30 shown twice at fall back runs the first time
    ("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 30)),
    ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30)),
    ("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)),
    ("30 2 8 3 *", "America/New_York", utc(2026, 3, 1), utc(2026, 3, 8, 7, 30)),
    ("0 9 * * 1-5", "America/New_York", utc(2026, 3, 6, 15), utc(2026, 3, 9, 13)),  # now EDT
]


@pytest.mark.parametrize(("cron", "tz", "after", "expected"), NEXT)
def test_next_due_time(
    cron: str, tz: str | None, after: dt.datetime, expected: dt.datetime
) -> None:
    assert made(cron, tz=tz).next_due(after) == expected


DAY_COUNTS = [  # (cron string, time zone, a local day in that zone, how many due times it has)
    ("*/5 9-17 * * 1-5", None, dt.date(2026, 1, 5), 9 * 12),  # a Monday
    ("*/5 9-17 * * 1-5", None, dt.date(2026, 1, 4), 0),  # a Sunday
    ("0 0 13 * 5", None, dt.date(2026, 2, 13), 1),  # Friday the 13th: once, not twice
    ("*/30 * * * *", "America/New_York", dt.date(2026, 3, 8), 46),  # a 23-hour day
    ("*/30 * * * *", "America/New_York", dt.date(2026, 11, 1), 48),  # 01:xx shown twice
    ("* * * * *", "Europe/Berlin", dt.date(2026, 3, 29), 23 * 60),
    ("0 0 29 2 *", None, dt.date(2100, 2, 28), 0),
]


@pytest.mark.parametrize(("cron", "tz", "day", "count"), DAY_COUNTS)
def test_due_times_in_a_day(cron: str, tz: str | None, day: dt.date, count: int) -> None:
    found = made(cron, tz=tz)
    zone = found.rule.tz if hasattr(found.rule, "tz") else UTC
    start = dt.datetime.combine(day, dt.time(0), zone).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone).astimezone(UTC)
    times = [due for due in due_times(found.rule, start - dt.timedelta(microseconds=1), end)]
    assert len([due for due in times if due < end]) == count


def test_day_or_weekday_in_a_month() -> None:
    """January 2026: five Fridays and a Tuesday the 13th; the value form, Friday the 13th."""
    start, end = utc(2025, 12, 31, 23, 59), utc(2026, 1, 31, 23, 59)
    either = [due.day for due in due_times(made("0 0 13 * 5").rule, start, end)]
    assert either == [2, 9, 13, 16, 23, 30]
    both = get_schedule(
        schedule(crontab=Crontab(day=13, weekday=Weekday.FRIDAY), namespace="cron-and")(
            _nothing
        ).name,
        "cron-and",
    )
    assert due_times(both.rule, start, utc(2026, 12, 31)) == [
        utc(2026, 2, 13),
        utc(2026, 3, 13),
        utc(2026, 11, 13),
    ]


async def _nothing() -> None:
    pass


@pytest.mark.parametrize(
    ("cron", "crontab"),
    [
        ("0 0 * * 7", Crontab(weekday=Weekday.SUNDAY)),
        ("0 0 * * 0", Crontab(weekday=Weekday.SUNDAY)),
        ("0 0 * * SUN", Crontab(weekday=Weekday.SUNDAY)),
        ("0 9 * * 1,4", Crontab(weekday=(Weekday.MONDAY, Weekday.THURSDAY), hour=9)),
        ("0 9 * * mon-fri", Crontab(weekday=(0, 1, 2, 3, 4), hour=9)),
        (
            "0 9 * * 1-7/3",
            Crontab(weekday=(Weekday.MONDAY, Weekday.THURSDAY, Weekday.SUNDAY), hour=9),
        ),
        ("* * * * *", Crontab(hour=None, minute=None)),
        ("0 0 1 jan *", Crontab(month=1, day=1)),
        ("0 0 1 1 *", Crontab(month=1, day=1)),
        ("0 */6 * * *", Crontab(hour=(0, 6, 12, 18))),
        ("0,30 * * * *", Crontab(hour=None, minute=(0, 30))),
        ("0 0 13 * 5", Crontab(day=13, weekday=Weekday.FRIDAY, day_or_weekday=True)),
        ("0 0 */10 * 5", Crontab(day=(1, 11, 21, 31), weekday=Weekday.FRIDAY)),
    ],
)
def test_parse(cron: str, crontab: Crontab) -> None:
    assert Crontab.parse(cron) == crontab


def test_the_string_form_of_a_schedule() -> None:
    found = made("  */5\t9-17 * *  1-5 ", tz="Europe/Berlin")
    assert found.spec == "cron '*/5 9-17 * * 1-5' (Europe/Berlin)"
    assert repr(Crontab.parse("0 0 13 * 5")).endswith("day_or_weekday=True)")
    assert repr(Crontab(hour=9)) == "Crontab(month=None, day=None, weekday=None, hour=9, minute=0)"


BAD = [  # (cron string, what the message must say)
    ("", "has 0 fields"),
    ("* * * *", "has 4 fields"),
    ("* * * * * *", "has 6 fields"),
    ("@daily", "has 1 fields"),
    ("60 * * * *", "minute '60': 60 is out of range: minute is 0 to 59"),
    ("* 24 * * *", "hour '24': 24 is out of range"),
    ("* * 0 * *", "day of month '0': 0 is out of range: day of month is 1 to 31"),
    ("* * 32 * *", "day of month '32': 32 is out of range"),
    ("* * * 0 *", "month '0': 0 is out of range"),
    ("* * * 13 *", "month '13': 13 is out of range"),
    ("* * * * 8", "day of week '8': 8 is out of range: day of week is 0 to 7"),
    ("0-60 * * * *", "minute '0-60': 60 is out of range"),
    ("*/0 * * * *", "minute '\\*/0': step '0' is not a whole number of at least 1"),
    ("*/x * * * *", "minute '\\*/x': step 'x'"),
    ("*/ * * * *", "minute '\\*/': step ''"),
    ("* 1-5/-1 * * *", "hour '1-5/-1': step '-1'"),
    ("5/10 * * * *", "minute '5/10': a step follows"),
    ("* 17-9 * * *", "hour '17-9': range '17-9' runs backwards"),
    ("* * * * fri-mon", "day of week 'fri-mon': range 'fri-mon' runs backwards"),
    ("* * * * sat-sun", "day of week 'sat-sun': range 'sat-sun' runs backwards"),
    ("* * * foo *", "month 'foo': 'foo' is neither a number nor one of jan, feb"),
    ("* * * january *", "month 'january': 'january'"),
    ("* * * * funday", "day of week 'funday': 'funday' is neither a number nor one of sun"),
    ("* * mon * *", "day of month 'mon': 'mon' is not a number"),
    ("1,,2 * * * *", "minute '1,,2': an empty value"),
    ("-1 * * * *", "minute '-1': '' is not a number"),
    ("* * * * ?", "day of week '\\?'"),
    ("0 0 L * *", "day of month 'L'"),
    ("1.5 * * * *", "minute '1.5'"),
    ("0 0 31 2 *", "cron '0 0 31 2 \\*': .* never matches"),
    ("0 0 30,31 feb *", "never matches"),
    ("0 0 31 apr,jun,sep,nov *", "never matches"),
]


@pytest.mark.parametrize(("cron", "message"), BAD)
def test_bad_cron_strings(cron: str, message: str) -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match=message):
        Crontab.parse(cron)
    with pytest.raises(InvalidScheduleSpecificationError, match=message):
        schedule(cron=cron)  # refused where it is written, not when first due


def test_a_cron_string_is_text() -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match="a cron string is text"):
        Crontab.parse(5)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        {"cron": "* * * * *", "interval": dt.timedelta(minutes=1)},
        {"cron": "* * * * *", "at": dt.time(3)},
        {"cron": "* * * * *", "crontab": Crontab()},
    ],
)
def test_cron_and_another_specification(spec: dict[str, Any]) -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match="exactly one of"):
        schedule(**spec)


def test_a_cron_string_in_crontab_says_where_it_goes() -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match="goes in cron="):
        schedule(crontab="0 3 * * *")  # type: ignore[arg-type]


def test_day_or_weekday_is_a_bool() -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match="True or False"):
        Crontab(day_or_weekday=1)  # type: ignore[arg-type]
