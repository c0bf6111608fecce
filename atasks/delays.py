"""``with atasks.delayed(seconds)`` / ``atasks.delayed(until=datetime)``: the calls made in the
block do not run before their time.

The time travels with each call as its ``not-before`` header (an absolute ``time.time()``). A
transport that can hold a request until then does so (over RabbitMQ: a ladder of TTL queues,
``atasks.transport.backends.amqp.delays``); whatever the transport, a server that gets a
request early waits until its time before running it, holding no slot.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import math
import time
from types import TracebackType
from typing import Any

from atasks.middleware import Call, Middleware, Proceed
from atasks.transport.contract import Capacity

NOT_BEFORE = "not-before"
"""The header of a delayed call: when it may run, ``time.time()`` seconds as text."""

not_before_var: contextvars.ContextVar[float | None] = contextvars.ContextVar(
    "atasks_not_before", default=None
)


class delayed:  # used as a function: ``with atasks.delayed(3): ...``
    """``with atasks.delayed(seconds):`` or ``async with``: the calls and fire-and-forget
    requests made in the block run ``seconds`` from now at the earliest (``until=``: at an
    aware ``datetime``, or a naive one in local time).

    Over RabbitMQ a delayed request waits in the broker, survives its restart, and reaches a
    server within about a second after its time (docs: guides/fleet-limits.md). An awaited call's
    deadline (``atasks.deadline``, ``@atask(timeout=...)``) counts from now, the delay included.
    """

    def __init__(
        self, seconds: float | None = None, *, until: datetime.datetime | None = None
    ) -> None:
        if (seconds is None) == (until is None):
            raise TypeError("delayed() takes seconds or until=, one of them")
        if seconds is not None:
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                raise TypeError(f"delayed() takes a number of seconds, not {seconds!r}")
            if not math.isfinite(seconds) or seconds < 0:
                raise ValueError(f"delayed() takes seconds >= 0, not {seconds!r}")
            self.seconds: float | None = seconds
            self.until: float | None = None
        else:
            if not isinstance(until, datetime.datetime):
                raise TypeError(f"delayed(until=...) takes a datetime, not {until!r}")
            self.seconds, self.until = None, until.timestamp()
        self._token: contextvars.Token[float | None] | None = None

    def __enter__(self) -> float:
        """Returns the time (``time.time()`` seconds) the block's calls may run from."""
        when = self.until if self.until is not None else time.time() + (self.seconds or 0.0)
        self._token = not_before_var.set(when)
        return when

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            not_before_var.reset(self._token)
            self._token = None

    async def __aenter__(self) -> float:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)


def not_before(headers: Any) -> float | None:
    """The time a request's headers say it may run from, if any."""
    text = headers.get(NOT_BEFORE) if headers else None
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def later(headers: Any) -> float | None:
    """The time a request's headers say it may run from, if that is still to come."""
    when = not_before(headers)
    return when if when is not None and when > time.time() else None


class Delay(Middleware):
    """Call side: a call made in a ``delayed`` block carries its time as a header."""

    async def call(self, call: Call, proceed: Proceed) -> Any:
        when = not_before_var.get()
        if when is not None:
            call.headers[NOT_BEFORE] = repr(when)
        return await proceed(call)


class NotBefore(Middleware):
    """Serve side, outermost of the atask's own: a request that arrived before its time waits
    for it, holding no slot (a slot the transport took is given back)."""

    def __init__(self, slots: Capacity) -> None:
        self.slots = slots

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        when = not_before(call.headers)
        if when is not None and when > time.time():
            request = call.request
            if request is not None and request.slot_taken:
                request.slot_taken = False
                self.slots.give_back_untaken()
            # sleep() counts on the monotonic clock and may wake a hair early by the wall clock
            while (left := when - time.time()) > 0:  # noqa: ASYNC110
                await asyncio.sleep(left)
        return await proceed(call)
