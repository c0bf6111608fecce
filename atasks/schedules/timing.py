"""When a schedule is due: pure arithmetic on aware datetimes, no clock read here.

Due times are instants, compared and named in UTC. An ``Interval`` counts from the Unix epoch,
so every process computes the same due times (``timedelta(minutes=30)``: :00 and :30 UTC).
A ``WallClock`` rule names times of day in a time zone, on the dates it matches:

- a time the clock skips (spring forward, 02:30 in New York on a day it jumps from 02:00 to
  03:00) is due once, as long after the jump as it was after the start of the gap (03:30); times
  that land on one instant are one due time;
- a time the clock shows twice (fall back) is due once, the first time it shows.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
from collections.abc import Callable
from dataclasses import dataclass

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
MICROSECOND = dt.timedelta(microseconds=1)
SEARCH_DAYS = 401 * 366  # the Gregorian calendar repeats every 400 years


@dataclass(frozen=True)
class Interval:
    """Due every ``every``, counted from the Unix epoch."""

    every: dt.timedelta

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        step = self.every // MICROSECOND
        elapsed = (instant - EPOCH) // MICROSECOND
        return EPOCH + (elapsed // step + 1) * step * MICROSECOND

    def at_or_before(self, instant: dt.datetime) -> dt.datetime:
        step = self.every // MICROSECOND
        elapsed = (instant - EPOCH) // MICROSECOND
        return EPOCH + (elapsed // step) * step * MICROSECOND


@dataclass(frozen=True)
class WallClock:
    """Due at each of ``times`` (sorted times of day) in ``tz``, on the dates ``dates`` accepts."""

    dates: Callable[[dt.date], bool]
    times: tuple[dt.time, ...]
    tz: dt.tzinfo

    @functools.lru_cache(maxsize=16)  # noqa: B019 - rules live as long as their schedules
    def _due_on(self, day: dt.date) -> tuple[dt.datetime, ...]:
        """The due times of a local date, as sorted UTC instants."""
        if not self.dates(day):
            return ()
        # fold=0: the first of two times the clock shows twice; a time it skips is read with
        # the offset before the jump, which puts it as far after the jump as it was in the gap.
        return tuple(
            sorted(
                {
                    dt.datetime.combine(day, at).replace(tzinfo=self.tz, fold=0).astimezone(dt.UTC)
                    for at in self.times
                }
            )
        )

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        # A time skipped on one date may land after the first times of the next: look at the
        # date found and the one after it, and take the earliest.
        start = instant.astimezone(self.tz).date() - dt.timedelta(days=1)
        for offset in range(SEARCH_DAYS):
            day = start + dt.timedelta(days=offset)
            found = self._after(day, instant)
            if found is not None:
                later = self._after(day + dt.timedelta(days=1), instant)
                return found if later is None else min(found, later)
        raise ValueError("this schedule is never due")  # Crontab checks it matches some date

    def _after(self, day: dt.date, instant: dt.datetime) -> dt.datetime | None:
        times = self._due_on(day)
        index = bisect.bisect_right(times, instant)
        return times[index] if index < len(times) else None

    def at_or_before(self, instant: dt.datetime) -> dt.datetime:
        start = instant.astimezone(self.tz).date() + dt.timedelta(days=1)
        for offset in range(SEARCH_DAYS):
            day = start - dt.timedelta(days=offset)
            found = self._at_or_before(day, instant)
            if found is not None:
                earlier = self._at_or_before(day - dt.timedelta(days=1), instant)
                return found if earlier is None else max(found, earlier)
        raise ValueError("this schedule was never due")

    def _at_or_before(self, day: dt.date, instant: dt.datetime) -> dt.datetime | None:
        times = self._due_on(day)
        index = bisect.bisect_right(times, instant)
        return times[index - 1] if index else None


Rule = Interval | WallClock


def due_times(rule: Rule, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Every due time in ``(after, until]``, oldest first."""
    found: list[dt.datetime] = []
    due = rule.next_after(after)
    while due <= until:
        found.append(due)
        due = rule.next_after(due)
    return found
