"""``@schedule``: run an atask at fixed times, once per due time across a namespace's servers."""

from __future__ import annotations

import datetime as dt
import hashlib
import inspect
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from atasks.errors import InvalidScheduleSpecificationError, ScheduleNotFoundError
from atasks.namespaces import DEFAULT, namespace, register_schedule
from atasks.schedules.crontab import Crontab, values
from atasks.schedules.timing import Interval, Rule, WallClock, due_times
from atasks.tasks import ATask

Missed = Literal["skip", "catch_up"]
MISSED = ("skip", "catch_up")
MISSED_AFTER = dt.timedelta(seconds=60)
"""A due time this late (beyond its jitter) when a holder of the scheduler role first sees it
passed while no server held the role: the schedule's ``missed`` policy applies. One less late
(passed during a takeover) is fired, late."""
SHORTEST_INTERVAL = dt.timedelta(seconds=1)


@dataclass(frozen=True)
class Schedule:
    """One registered schedule: which atask, when (``rule``), and how."""

    name: str
    atask: ATask[Any, Any]
    rule: Rule = field(compare=False)
    spec: str
    """When, in words: ``every 0:00:01``, ``daily at 03:00:00 (Europe/Paris)``, a ``Crontab``."""
    jitter: dt.timedelta = dt.timedelta(0)
    missed: Missed = "skip"

    def next_due(self, after: dt.datetime) -> dt.datetime:
        """The first due time after ``after`` (an aware datetime), in UTC."""
        return self.rule.next_after(after)

    def delay(self, due: dt.datetime) -> dt.timedelta:
        """How long after ``due`` it is fired: a share of ``jitter`` that every server computes
        alike, so a takeover fires it at the same moment."""
        if not self.jitter:
            return dt.timedelta(0)
        digest = hashlib.blake2b(self.call_id(due).encode(), digest_size=8).digest()
        return self.jitter * (int.from_bytes(digest, "big") / 2**64)

    def call_id(self, due: dt.datetime) -> str:
        """The id of the call fired for ``due``: ``<name>@<due time, ISO, UTC>``."""
        return f"{self.name}@{due.astimezone(dt.UTC).isoformat()}"

    def plan(self, last: dt.datetime, now: dt.datetime) -> Plan:
        """What to do at ``now`` when due times up to ``last`` have been handled."""
        fire: list[dt.datetime] = []
        missed: tuple[dt.datetime, dt.datetime] | None = None
        # Missed: its firing (with the most jitter there could be) is over MISSED_AFTER late.
        horizon = now - MISSED_AFTER - self.jitter
        first = self.rule.next_after(last)
        if first <= horizon:
            latest = self.rule.at_or_before(horizon)
            missed = (first, latest)
            if self.missed == "catch_up":
                fire.append(latest)
            last = latest
        for due in due_times(self.rule, last, now):
            if due + self.delay(due) > now:
                break
            fire.append(due)
            last = due
        return Plan(fire=fire, missed=missed, last=last)

    def wake_at(self, last: dt.datetime) -> dt.datetime:
        """When the next due time after ``last`` is to be fired (jitter included)."""
        due = self.rule.next_after(last)
        return due + self.delay(due)


@dataclass(frozen=True)
class Plan:
    fire: list[dt.datetime]
    """Due times to fire now, oldest first."""
    missed: tuple[dt.datetime, dt.datetime] | None
    """The first and last due times that passed with nobody to fire them, if any."""
    last: dt.datetime
    """The latest due time handled (fired or missed) once this plan is carried out."""


def schedule(
    *,
    interval: dt.timedelta | None = None,
    at: dt.time | None = None,
    crontab: Crontab | None = None,
    cron: str | None = None,
    tz: str | dt.tzinfo | None = None,
    jitter: dt.timedelta | float = 0,
    missed: Missed = "skip",
    name: str | None = None,
    namespace: str | None = None,
) -> Callable[[Callable[..., Any]], ATask[Any, Any]]:
    """Run the decorated atask (or plain function, then registered as an atask) on one server of
    its namespace at each due time: every ``interval``, daily ``at`` a time of day, when a
    ``crontab`` matches, or a ``cron`` string (``"*/5 9-17 * * 1-5"``, see ``Crontab.parse``:
    cron's "day or weekday") — exactly one of them, in time zone ``tz`` (a zoneinfo name or
    ``tzinfo``; default UTC). Each firing waits a share of ``jitter`` (a ``timedelta`` or
    seconds), the same on every server. ``missed``: due times that passed while no server ran
    (``"skip"``, the default, or ``"catch_up"``: run once). ``name`` defaults to the atask's.

    Raises ``InvalidScheduleSpecificationError`` where it decorates.
    """
    given = [option for option in (interval, at, crontab, cron) if option is not None]
    if len(given) != 1:
        raise InvalidScheduleSpecificationError(
            "@schedule takes exactly one of interval=, at=, crontab= and cron=, not "
            f"{len(given) or 'none'}"
        )
    zone = _zone(tz)
    if cron is not None:
        crontab = Crontab.parse(cron)
    rule, spec = _rule(interval, at, crontab, zone)
    if cron is not None:
        spec = f"cron {' '.join(cron.split())!r} ({zone})"
    delay = _jitter(jitter, interval)
    if missed not in MISSED:
        raise InvalidScheduleSpecificationError(
            f"@schedule(missed=...) is 'skip' or 'catch_up', not {missed!r}"
        )

    def decorate(fn: Callable[..., Any]) -> ATask[Any, Any]:
        if isinstance(fn, ATask):
            if namespace is not None and namespace != fn.namespace:
                raise InvalidScheduleSpecificationError(
                    f"@schedule(namespace={namespace!r}) on atask {fn.name!r} of namespace "
                    f"{fn.namespace!r}: leave namespace out, it is the atask's"
                )
            atask = fn
        elif callable(fn):
            _check_takes_no_arguments(fn)
            atask = ATask(fn, namespace=namespace or DEFAULT)
        else:
            raise InvalidScheduleSpecificationError(f"@schedule needs a function, not {fn!r}")
        _check_takes_no_arguments(atask.fn)
        register_schedule(
            Schedule(
                name=name or atask.name,
                atask=atask,
                rule=rule,
                spec=spec,
                jitter=delay,
                missed=missed,
            )
        )
        return atask

    return decorate


def get_schedule(name: str, namespace_name: str = DEFAULT) -> Schedule:
    """The schedule registered as ``name``; ``ScheduleNotFoundError`` if there is none."""
    found: Schedule | None = namespace(namespace_name).schedules.get(name)
    if found is None:
        raise ScheduleNotFoundError(
            f"no schedule {name!r} in namespace {namespace_name!r}: import the module that "
            "declares it"
        )
    return found


def registered(namespace_name: str = DEFAULT) -> list[Schedule]:
    """The schedules registered in a namespace, by name."""
    return sorted(namespace(namespace_name).schedules.values(), key=lambda s: s.name)


def _zone(tz: str | dt.tzinfo | None) -> dt.tzinfo:
    if tz is None:
        return dt.UTC
    if isinstance(tz, dt.tzinfo):
        return tz
    if not isinstance(tz, str):
        raise InvalidScheduleSpecificationError(
            f"@schedule(tz=...) takes a zone name or a tzinfo, not {tz!r}"
        )
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidScheduleSpecificationError(
            f"@schedule(tz={tz!r}): no such time zone (names look like 'Europe/Paris')"
        ) from None


def _rule(
    interval: dt.timedelta | None, at: dt.time | None, crontab: Crontab | None, zone: dt.tzinfo
) -> tuple[Rule, str]:
    if interval is not None:
        if not isinstance(interval, dt.timedelta) or interval < SHORTEST_INTERVAL:
            raise InvalidScheduleSpecificationError(
                f"@schedule(interval=...) takes a timedelta of at least {SHORTEST_INTERVAL}, "
                f"not {interval!r}"
            )
        return Interval(interval), f"every {interval}"
    if at is not None:
        if not isinstance(at, dt.time) or at.tzinfo is not None:
            raise InvalidScheduleSpecificationError(
                f"@schedule(at=...) takes a datetime.time without tzinfo (the zone is tz=), "
                f"not {at!r}"
            )
        return WallClock(_every_day, (at,), zone), f"daily at {at.isoformat()} ({zone})"
    if not isinstance(crontab, Crontab):
        raise InvalidScheduleSpecificationError(
            f"@schedule(crontab=...) takes an atasks.Crontab, not {crontab!r} (a cron string "
            "goes in cron=)"
        )
    months, days = set(values(crontab, "month")), set(values(crontab, "day"))
    weekdays = set(values(crontab, "weekday"))
    times = tuple(
        dt.time(hour, minute)
        for hour, minute in itertools.product(values(crontab, "hour"), values(crontab, "minute"))
    )

    either = crontab.day_or_weekday and crontab.day is not None and crontab.weekday is not None

    def dates(day: dt.date) -> bool:
        if day.month not in months:
            return False
        if either:
            return day.day in days or day.weekday() in weekdays
        return day.day in days and day.weekday() in weekdays

    return WallClock(dates, times, zone), f"{crontab!r} ({zone})"


def _every_day(day: dt.date) -> bool:
    return True


def _jitter(jitter: dt.timedelta | float, interval: dt.timedelta | None) -> dt.timedelta:
    if isinstance(jitter, bool) or not isinstance(jitter, dt.timedelta | int | float):
        raise InvalidScheduleSpecificationError(
            f"@schedule(jitter=...) takes a timedelta or seconds, not {jitter!r}"
        )
    delay = jitter if isinstance(jitter, dt.timedelta) else dt.timedelta(seconds=jitter)
    if delay < dt.timedelta(0):
        raise InvalidScheduleSpecificationError(f"@schedule(jitter=...) is negative: {jitter!r}")
    if interval is not None and delay >= interval:
        raise InvalidScheduleSpecificationError(
            f"@schedule(jitter={delay}) must be shorter than its interval, {interval}"
        )
    return delay


def _check_takes_no_arguments(fn: Callable[..., Any]) -> None:
    try:
        inspect.signature(fn).bind()
    except TypeError:
        raise InvalidScheduleSpecificationError(
            f"@schedule runs {getattr(fn, '__qualname__', fn)!r} without arguments, and it "
            "requires some: give them defaults"
        ) from None
    except ValueError:  # no signature to read (a builtin): trust it
        pass
