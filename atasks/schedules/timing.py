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

import datetime as dt
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

    def _due_on(self, day: dt.date) -> list[dt.datetime]:
        if not self.dates(day):
            return []
        # fold=0: the first of two times the clock shows twice; a time it skips is read with
        # the offset before the jump, which puts it as far after the jump as it was in the gap.
        return [
            dt.datetime.combine(day, at).replace(tzinfo=self.tz, fold=0).astimezone(dt.UTC)
            for at in self.times
        ]

    def next_after(self, instant: dt.datetime) -> dt.datetime:
        # A time skipped on one date may land after the first times of the next: look at the
        # date found and the one after it, and take the earliest.
        start = instant.astimezone(self.tz).date() - dt.timedelta(days=1)
        for offset in range(SEARCH_DAYS):
            day = start + dt.timedelta(days=offset)
            found = [due for due in self._due_on(day) if due > instant]
            if found:
                later = self._due_on(day + dt.timedelta(days=1))
                return min(found + [due for due in later if due > instant])
        raise ValueError("this schedule is never due")  # Crontab checks it matches some date

    def at_or_before(self, instant: dt.datetime) -> dt.datetime:
        start = instant.astimezone(self.tz).date() + dt.timedelta(days=1)
        for offset in range(SEARCH_DAYS):
            day = start - dt.timedelta(days=offset)
            found = [due for due in self._due_on(day) if due <= instant]
            if found:
                earlier = self._due_on(day - dt.timedelta(days=1))
                return max(found + [due for due in earlier if due <= instant])
        raise ValueError("this schedule was never due")


Rule = Interval | WallClock


def due_times(rule: Rule, after: dt.datetime, until: dt.datetime) -> list[dt.datetime]:
    """Every due time in ``(after, until]``, oldest first."""
    found: list[dt.datetime] = []
    due = rule.next_after(after)
    while due <= until:
        found.append(due)
        due = rule.next_after(due)
    return found
