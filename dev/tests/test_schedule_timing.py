"""Schedules, the pure part: due-time arithmetic on a fake clock, missed due times, jitter, and
the specifications refused where they are decorated."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest

import atasks
from atasks import (
    Crontab,
    DuplicateScheduleError,
    InvalidScheduleSpecificationError,
    Month,
    ScheduleNotFoundError,
    Weekday,
    atask,
    get_schedule,
    schedule,
)
from atasks.schedules.decorator import MISSED_AFTER
from atasks.schedules.timing import due_times

UTC = dt.UTC
_namespaces = itertools.count()


def utc(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def made(**spec: Any) -> atasks.Schedule:
    """A schedule of a fresh atask, in a namespace of its own (nothing else ever serves it)."""
    ns = f"timing-{next(_namespaces)}"

    async def job() -> None:
        pass

    declared = schedule(**spec, namespace=ns)(job)
    return get_schedule(spec.get("name", declared.name), ns)


NEXT = [  # (specification, after, the next due time), all in UTC
    ({"interval": dt.timedelta(minutes=30)}, utc(2026, 5, 1, 10, 7), utc(2026, 5, 1, 10, 30)),
    ({"interval": dt.timedelta(minutes=30)}, utc(2026, 5, 1, 10, 30), utc(2026, 5, 1, 11, 0)),
    (
        {"interval": dt.timedelta(seconds=1)},
        utc(2026, 5, 1, 0, 0, 0, 999),
        utc(2026, 5, 1, 0, 0, 1),
    ),
    ({"at": dt.time(3, 0)}, utc(2026, 1, 1, 3, 0), utc(2026, 1, 2, 3, 0)),
    ({"at": dt.time(3, 0)}, utc(2026, 1, 1, 2, 59), utc(2026, 1, 1, 3, 0)),
    # month ends: a day some months lack is due only in those that have it
    ({"crontab": Crontab(day=31)}, utc(2026, 4, 15), utc(2026, 5, 31)),
    ({"crontab": Crontab(day=30)}, utc(2026, 2, 1), utc(2026, 3, 30)),
    ({"crontab": Crontab(day=(1, 15))}, utc(2026, 12, 15), utc(2027, 1, 1)),
    # Feb 29: leap years only, and 2100 is not one
    ({"crontab": Crontab(month=Month.FEBRUARY, day=29)}, utc(2026, 1, 1), utc(2028, 2, 29)),
    ({"crontab": Crontab(month=Month.FEBRUARY, day=29)}, utc(2096, 3, 1), utc(2104, 2, 29)),
    # day and weekday: both must match (Friday the 13th; a Feb 29 that is a Monday)
    ({"crontab": Crontab(day=13, weekday=Weekday.FRIDAY)}, utc(2026, 1, 1), utc(2026, 2, 13)),
    (
        {"crontab": Crontab(month=Month.FEBRUARY, day=29, weekday=Weekday.MONDAY)},
        utc(2026, 1, 1),
        utc(2044, 2, 29),
    ),
    (
        {"crontab": Crontab(weekday=(Weekday.MONDAY, Weekday.FRIDAY), hour=9)},
        utc(2026, 11, 21, 12),  # a Saturday
        utc(2026, 11, 23, 9),
    ),
    ({"crontab": Crontab(hour=None, minute=(0, 30))}, utc(2026, 1, 1, 23, 45), utc(2026, 1, 2)),
    # time zones: 09:00 in Tokyo is 00:00 UTC
    ({"at": dt.time(9, 0), "tz": "Asia/Tokyo"}, utc(2026, 6, 1, 1), utc(2026, 6, 2, 0)),
    # spring forward: 02:30 does not exist that night; it is due once, at 03:30 local
    ({"at": dt.time(2, 30), "tz": "America/New_York"}, utc(2026, 3, 7, 17), utc(2026, 3, 8, 7, 30)),
    (
        {"at": dt.time(2, 30), "tz": "America/New_York"},
        utc(2026, 3, 8, 7, 30),
        utc(2026, 3, 9, 6, 30),
    ),
    ({"at": dt.time(2, 30), "tz": "Europe/Paris"}, utc(2026, 3, 28, 12), utc(2026, 3, 29, 1, 30)),
    # fall back: 01:30 shows twice; it is due once, the first time
    (
        {"at": dt.time(1, 30), "tz": "America/New_York"},
        utc(2026, 10, 31, 16),
        utc(2026, 11, 1, 5, 30),
    ),
    (
        {"at": dt.time(1, 30), "tz": "America/New_York"},
        utc(2026, 11, 1, 5, 30),
        utc(2026, 11, 2, 6, 30),
    ),
    ({"at": dt.time(2, 30), "tz": "Europe/Paris"}, utc(2026, 10, 24, 12), utc(2026, 10, 25, 0, 30)),
]


@pytest.mark.parametrize(("spec", "after", "expected"), NEXT)
def test_next_due_time(spec: dict[str, Any], after: dt.datetime, expected: dt.datetime) -> None:
    assert made(**spec).next_due(after) == expected


DAY_COUNTS = [  # (specification, a local day in that zone, how many due times it has)
    ({"at": dt.time(2, 30), "tz": "America/New_York"}, dt.date(2026, 3, 8), 1),  # spring forward
    ({"at": dt.time(1, 30), "tz": "America/New_York"}, dt.date(2026, 11, 1), 1),  # fall back
    ({"crontab": Crontab(hour=None), "tz": "America/New_York"}, dt.date(2026, 3, 8), 23),
    ({"crontab": Crontab(hour=None), "tz": "America/New_York"}, dt.date(2026, 11, 1), 24),
    ({"crontab": Crontab(hour=None), "tz": "America/New_York"}, dt.date(2026, 6, 1), 24),
    (
        {"crontab": Crontab(hour=None, minute=None), "tz": "Europe/Paris"},
        dt.date(2026, 3, 29),
        1380,
    ),
    ({"crontab": Crontab(day=29, month=2)}, dt.date(2028, 2, 29), 1),
    ({"crontab": Crontab(day=29, month=2)}, dt.date(2100, 2, 28), 0),
]


@pytest.mark.parametrize(("spec", "day", "count"), DAY_COUNTS)
def test_due_times_in_a_day(spec: dict[str, Any], day: dt.date, count: int) -> None:
    found = made(**spec)
    zone = found.rule.tz if hasattr(found.rule, "tz") else UTC
    start = dt.datetime.combine(day, dt.time(0), zone).astimezone(UTC)
    end = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(0), zone).astimezone(UTC)
    times = due_times(found.rule, start - dt.timedelta(microseconds=1), end)
    times = [due for due in times if due < end]
    assert len(times) == count
    assert len(set(times)) == len(times)


def test_due_times_not_missed_are_fired_late_each() -> None:
    """Due times that passed less than MISSED_AFTER ago (a takeover) are all fired."""
    every = made(interval=dt.timedelta(seconds=1))
    now = utc(2026, 1, 1, 12, 0, 0, 500000)
    plan = every.plan(now - dt.timedelta(seconds=5), now)
    assert plan.fire == [utc(2026, 1, 1, 11, 59, 56 + i) for i in range(4)] + [utc(2026, 1, 1, 12)]
    assert plan.missed is None
    assert plan.last == utc(2026, 1, 1, 12)


@pytest.mark.parametrize("policy", ["skip", "catch_up"])
def test_missed_due_times(policy: str) -> None:
    hourly = made(crontab=Crontab(hour=None), missed=policy)
    now = utc(2026, 1, 1, 12, 0, 30)
    plan = hourly.plan(utc(2026, 1, 1, 7, 30), now)  # no server from 07:30 to now
    assert plan.missed == (utc(2026, 1, 1, 8), utc(2026, 1, 1, 11))
    assert plan.fire == ([utc(2026, 1, 1, 11)] if policy == "catch_up" else []) + [
        utc(2026, 1, 1, 12)
    ]
    assert plan.last == utc(2026, 1, 1, 12)
    assert now - MISSED_AFTER < utc(2026, 1, 1, 12)


def test_jitter_delays_each_firing_alike_everywhere() -> None:
    jittery = made(interval=dt.timedelta(minutes=10), jitter=dt.timedelta(minutes=2))
    due = utc(2026, 1, 1, 10)
    delay = jittery.delay(due)
    assert dt.timedelta(0) <= delay < dt.timedelta(minutes=2)
    assert jittery.delay(due) == delay  # the same on every server, so a takeover agrees
    assert len({jittery.delay(due + i * dt.timedelta(minutes=10)) for i in range(10)}) > 1
    assert jittery.plan(due - dt.timedelta(minutes=1), due + delay / 2).fire == [] or delay == 0
    assert jittery.plan(due - dt.timedelta(minutes=1), due + delay).fire == [due]
    assert jittery.wake_at(due - dt.timedelta(minutes=1)) == due + delay


def test_call_id_names_the_schedule_and_due_time() -> None:
    nightly = made(at=dt.time(3, 0), tz="Europe/Paris", name="nightly")
    due = nightly.next_due(utc(2026, 11, 23))
    assert nightly.call_id(due) == "nightly@2026-11-23T02:00:00+00:00"


INVALID = [
    ({}, "exactly one of"),
    ({"interval": dt.timedelta(hours=1), "at": dt.time(3)}, "exactly one of"),
    ({"interval": dt.timedelta(milliseconds=500)}, "at least 0:00:01"),
    ({"interval": 60}, "takes a timedelta"),
    ({"at": dt.time(3, tzinfo=UTC)}, "without tzinfo"),
    ({"at": "03:00"}, "datetime.time"),
    ({"crontab": "0 3 * * *"}, "atasks.Crontab"),
    ({"at": dt.time(3), "tz": "Mars/Olympus"}, "no such time zone"),
    ({"at": dt.time(3), "tz": 2}, "zone name or a tzinfo"),
    ({"at": dt.time(3), "missed": "later"}, "'skip' or 'catch_up'"),
    ({"at": dt.time(3), "jitter": -1}, "negative"),
    ({"at": dt.time(3), "jitter": "1s"}, "timedelta or seconds"),
    ({"interval": dt.timedelta(seconds=10), "jitter": 10}, "shorter than its interval"),
]


@pytest.mark.parametrize(("spec", "message"), INVALID)
def test_invalid_specification(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match=message):
        schedule(**spec)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"hour": 24}, "from 0 to 23"),
        ({"minute": -1}, "from 0 to 59"),
        ({"day": 0}, "from 1 to 31"),
        ({"weekday": 7}, "from 0 to 6"),
        ({"month": 13}, "from 1 to 12"),
        ({"day": ()}, "matches nothing"),
        ({"hour": True}, "whole numbers"),
        ({"hour": 1.5}, "whole numbers"),
        ({"month": Month.FEBRUARY, "day": 30}, "never matches"),
        ({"month": (Month.APRIL, Month.JUNE), "day": 31}, "never matches"),
    ],
)
def test_invalid_crontab(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match=message):
        Crontab(**fields)


def test_a_scheduled_function_must_run_without_arguments() -> None:
    with pytest.raises(InvalidScheduleSpecificationError, match="without arguments"):

        @schedule(at=dt.time(3), namespace="timing-args")
        async def needs(x: int) -> None:
            pass


def test_schedule_on_an_atask_or_a_plain_coroutine_function() -> None:
    @schedule(at=dt.time(4), namespace="timing-forms")
    @atask(namespace="timing-forms")
    async def declared() -> str:
        return "declared"

    @schedule(at=dt.time(5), namespace="timing-forms")
    async def plain() -> str:
        return "plain"

    assert isinstance(declared, atasks.ATask)
    assert isinstance(plain, atasks.ATask)
    assert get_schedule(plain.name, "timing-forms").atask is plain
    assert get_schedule(declared.name, "timing-forms").spec == "daily at 04:00:00 (UTC)"


def test_registry_errors() -> None:
    async def one() -> None:
        pass

    async def two() -> None:
        pass

    schedule(at=dt.time(3), name="twice", namespace="timing-registry")(one)
    schedule(at=dt.time(3), name="twice", namespace="timing-registry")(one)  # the same: fine
    with pytest.raises(DuplicateScheduleError, match="'twice'"):
        schedule(at=dt.time(4), name="twice", namespace="timing-registry")(two)
    with pytest.raises(ScheduleNotFoundError, match="'nothing'"):
        get_schedule("nothing", "timing-registry")
