"""Retries: ``@atask(retry=Retry(...))`` runs a failing atask again on its server, after a
``Backoff``. Pure: what to wait and whether to try again; the router does the waiting."""

from __future__ import annotations

import contextlib
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BackoffKind = Literal["constant", "linear", "exponential"]
KINDS: tuple[BackoffKind, ...] = ("constant", "linear", "exponential")


@dataclass(frozen=True, slots=True)
class Backoff:
    """Seconds to wait before each retry: ``Backoff.constant(s)`` (s each time),
    ``Backoff.linear(s)`` (s, 2s, 3s…) or ``Backoff.exponential(s, factor=2)`` (s, 2s, 4s…).

    Each delay is kept within ``floor`` and ``ceiling``. ``jitter`` (0 to 1) then takes a random
    part, up to that fraction, off each delay (1 is "full jitter"), so that calls failing
    together do not retry together; a delay never goes below ``floor``.
    """

    kind: BackoffKind
    seconds: float
    factor: float = 2.0
    floor: float = 0.0
    ceiling: float = math.inf
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"backoff kind must be one of {', '.join(KINDS)}, not {self.kind!r}")
        if not 0 <= self.seconds < math.inf:
            raise ValueError(f"backoff seconds must be finite and at least 0, not {self.seconds}")
        if not self.factor >= 1:
            raise ValueError(f"backoff factor must be at least 1, not {self.factor}")
        if not 0 <= self.floor <= self.ceiling:
            raise ValueError(
                f"backoff needs 0 <= floor <= ceiling, not floor={self.floor}, "
                f"ceiling={self.ceiling}"
            )
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"backoff jitter is a fraction from 0 to 1, not {self.jitter}")

    @classmethod
    def constant(
        cls, seconds: float, *, floor: float = 0.0, ceiling: float = math.inf, jitter: float = 0.0
    ) -> Backoff:
        """``seconds`` before every retry."""
        return cls("constant", seconds, floor=floor, ceiling=ceiling, jitter=jitter)

    @classmethod
    def linear(
        cls, seconds: float, *, floor: float = 0.0, ceiling: float = math.inf, jitter: float = 0.0
    ) -> Backoff:
        """``seconds`` times the retry's number: ``seconds``, twice that, three times…"""
        return cls("linear", seconds, floor=floor, ceiling=ceiling, jitter=jitter)

    @classmethod
    def exponential(
        cls,
        seconds: float,
        *,
        factor: float = 2.0,
        floor: float = 0.0,
        ceiling: float = math.inf,
        jitter: float = 0.0,
    ) -> Backoff:
        """``seconds`` before the first retry, multiplied by ``factor`` for each one after."""
        return cls(
            "exponential", seconds, factor=factor, floor=floor, ceiling=ceiling, jitter=jitter
        )

    def delay(self, retry: int, rand: Callable[[], float] = random.random) -> float:
        """Seconds before retry number ``retry`` (1 is the first retry, the second attempt).

        ``rand`` draws the jitter, from [0, 1). ``math.inf`` means never (no ceiling, and a
        delay too large for a float).
        """
        if retry < 1:
            raise ValueError(f"retries are numbered from 1, not {retry}")
        if self.kind == "constant" or self.seconds == 0:
            raw = self.seconds
        elif self.kind == "linear":
            raw = self.seconds * retry
        else:
            try:
                raw = self.seconds * self.factor ** (retry - 1)
            except OverflowError:
                raw = math.inf
        bounded = min(max(raw, self.floor), self.ceiling)
        if self.jitter == 0 or math.isinf(bounded):
            return bounded
        return max(self.floor, bounded * (1 - self.jitter * rand()))


DEFAULT_BACKOFF = Backoff.exponential(0.1, ceiling=30.0)


@dataclass(frozen=True, slots=True)
class Retry:
    """Run a failing atask again, up to ``attempts`` times in all, when it raises one of ``on``
    (an exception type or a tuple of them; any ``Exception`` by default), after ``backoff``.

    Retries happen on the server that runs the call, within the call's deadline: a retry that
    could not start before it is not made. The caller gets the last exception, with the number
    of attempts made as its ``attempts`` attribute and in a note.
    """

    attempts: int = 3
    backoff: Backoff = DEFAULT_BACKOFF
    on: type[Exception] | tuple[type[Exception], ...] = Exception

    def __post_init__(self) -> None:
        if isinstance(self.attempts, bool) or not isinstance(self.attempts, int):
            raise TypeError(f"Retry(attempts=...) takes an int, not {self.attempts!r}")
        if self.attempts < 1:
            raise ValueError(f"Retry needs at least 1 attempt, not {self.attempts}")
        if not isinstance(self.backoff, Backoff):
            raise TypeError(
                f"Retry(backoff=...) takes a Backoff, e.g. Backoff.constant(1.0), not "
                f"{self.backoff!r}"
            )
        on = self.on if isinstance(self.on, tuple) else (self.on,)
        for kind in on:
            if not (isinstance(kind, type) and issubclass(kind, Exception)):
                raise TypeError(
                    f"Retry(on=...) takes Exception subclasses, not {kind!r} (cancellation and "
                    "the call's deadline are never retried)"
                )
        object.__setattr__(self, "on", on)

    def delay_after(
        self, attempt: int, exc: BaseException, rand: Callable[[], float] = random.random
    ) -> float | None:
        """Seconds to wait before the attempt after ``attempt`` (1 is the first), which failed
        with ``exc``; ``None`` when there is none: attempts used up, or ``exc`` not retried."""
        if attempt >= self.attempts or not isinstance(exc, self.on):
            return None
        return self.backoff.delay(attempt, rand)


def give_up(exc: BaseException, attempt: int, retry: Retry, why: str) -> None:
    """Mark ``exc``, about to reach the caller, with the attempts made: an ``attempts``
    attribute (where the exception takes one) and a note saying why there were no more."""
    with contextlib.suppress(AttributeError):  # an exception with __slots__ takes none
        exc.attempts = attempt  # type: ignore[attr-defined]
    exc.add_note(f"atasks: gave up on attempt {attempt} of {retry.attempts} ({why})")
