"""``@atask(limit=N)`` and ``@atask(rate="100/s")``: never more than N calls of an atask run at
once, and never more than the rate start, across every server of its namespace (the
transport's fleet-wide tokens, ``atasks.transport.tokens``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Coroutine
from typing import Any, TypeVar

from atasks.errors import ConfigurationError
from atasks.middleware import Call, Middleware, Proceed
from atasks.transport.contract import Capacity, Transport
from atasks.transport.tokens import Token

T = TypeVar("T")
HOLD = 0.05  # seconds a call waiting for its tokens keeps the slot its transport took


def limit_key(atask_name: str) -> str:
    """The token pool of an atask's limit (locks have pools of their own: ``lock.<name>``)."""
    return f"atask.{atask_name}"


def rate_key(atask_name: str, period: str) -> str:
    """The token pool of an atask's rate over ``period`` (``Rate.key``)."""
    return f"rate.{atask_name}.{period}"


class FleetLimit(Middleware):
    """Serve side, innermost (inside retries: each attempt counts): wait for a token of the
    atask's limit, then spend one of its rate, run the rest of the chain, give the first back.

    Waiting holds no local slot: a slot the transport took for the request is given back once
    the tokens have not come within ``HOLD`` seconds (giving it back at once costs a broker's
    intake a new consumer per call), and the run takes one after them. Waiting ends at the
    call's deadline.
    """

    def __init__(self, atask: Any, transport: Transport, slots: Capacity) -> None:
        self.limit: int | None = atask.limit
        self.rate = atask.rate
        self.limit_key = limit_key(atask.name)
        self.rate_key = rate_key(atask.name, atask.rate.key) if atask.rate else ""
        self.transport = transport
        self.slots = slots

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        tokens = self.transport.tokens()
        if tokens is None:
            raise ConfigurationError(
                f"atask {call.atask!r} has a fleet-wide limit or rate, and {self.transport!r} "
                "has no fleet-wide tokens to bound it with"
            )
        token = None
        if self.limit is not None:
            token = await self._wait(call, tokens.take(self.limit_key, self.limit), "slots")
        try:
            rate = self.rate
            if rate is not None:
                spending = tokens.spend(self.rate_key, rate.count, rate.period)
                await self._wait(call, spending, "rate")
            return await proceed(call)
        finally:
            if token is not None:
                await token.release()

    async def _wait(self, call: Call, waiting: Coroutine[Any, Any, T], what: str) -> T:
        """``waiting`` awaited within the call's deadline, holding the request's slot (if the
        transport took one) for ``HOLD`` seconds at most."""
        request = call.request
        if request is None or not request.slot_taken:
            return await _within(call, waiting, what)
        task = asyncio.ensure_future(waiting)
        try:
            await asyncio.wait({task}, timeout=HOLD)
        except asyncio.CancelledError:
            done = task.done() and not task.cancelled() and task.exception() is None
            got = task.result() if done else None
            if isinstance(got, Token):
                await got.release()  # got as the call was cancelled
            task.cancel()
            raise
        if not task.done() and request.slot_taken:
            request.slot_taken = False
            self.slots.give_back_untaken()
        return await _within(call, task, what)


async def _within(call: Call, waiting: Awaitable[T], what: str) -> T:
    """``waiting`` awaited until the call's deadline."""
    deadline = call.deadline
    if deadline is None:
        return await waiting
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout_at(loop.time() + deadline - time.time()):
            return await waiting
    except TimeoutError:
        raise TimeoutError(
            f"atask {call.atask!r} reached its deadline waiting for its fleet-wide {what}"
        ) from None
