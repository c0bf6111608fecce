"""``@atask(rate="100/s")``: how many calls of an atask may start per period, fleet-wide."""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_TOKENS = 10_000
"""The most tokens a pool has: a limit's N, a rate's calls per period (its burst)."""
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(\d+(?:\.\d+)?)?\s*([smhd])\s*$")


@dataclass(frozen=True, slots=True)
class Rate:
    """At most ``count`` calls start in any window of ``period`` seconds."""

    count: int
    period: float

    @classmethod
    def parse(cls, text: str) -> Rate:
        """``"100/s"``, ``"20/m"``, ``"5/h"``, ``"1/d"``, or with a number of units: ``"3/10s"``."""
        found = _RATE.match(text) if isinstance(text, str) else None
        if found is None:
            raise TypeError(
                f'a rate is "<calls>/<unit>" (s, m, h, d), e.g. "100/s" or "3/10s", not {text!r}'
            )
        count, times, unit = found.groups()
        period = float(times or 1) * UNITS[unit]
        if int(count) < 1 or period <= 0:
            raise TypeError(f"a rate is at least one call per period > 0, not {text!r}")
        if int(count) > MAX_TOKENS:
            raise TypeError(
                f"a rate of over {MAX_TOKENS} calls per period is too many tokens ({text!r}): "
                'say it over a shorter period, e.g. "1000/0.1s" for 10000/s'
            )
        return cls(int(count), period)

    @property
    def key(self) -> str:
        """Names its token pool together with the atask's: a new period is a new pool."""
        return f"{self.period:g}s"

    def __str__(self) -> str:
        return f"{self.count}/{self.period:g}s"
