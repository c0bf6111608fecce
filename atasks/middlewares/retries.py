"""``@atask(retry=...)``: a failing call runs again on its server, within its deadline."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any

from atasks.errors import type_name
from atasks.middleware import Call, Middleware, Proceed
from atasks.outcomes import message
from atasks.retry import Retry, give_up

log = logging.getLogger("atasks.router")


class Retries(Middleware):
    """Serve side: the rest of the chain again until an attempt succeeds or ``retry`` allows no
    more, within the call's deadline. Waiting for the next attempt, the call holds no slot (the
    slot is taken inside, for each attempt). ``retried`` is told of each new attempt."""

    def __init__(self, retry: Retry, retried: Callable[[], None]) -> None:
        self.retry = retry
        self.retried = retried

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        retry = self.retry
        deadline = call.deadline
        attempt = call.attempt = 1
        while True:
            try:
                return await proceed(call)
            except Exception as exc:
                delay = retry.delay_after(attempt, exc)
                if delay is None:
                    why = (
                        "no attempts left"
                        if attempt >= retry.attempts
                        else f"{type(exc).__name__} is not retried"
                    )
                    give_up(exc, attempt, retry, why)
                    raise
                if math.isinf(delay):  # an exponential backoff without a ceiling, grown past floats
                    give_up(exc, attempt, retry, "the next attempt would never start")
                    raise
                if deadline is not None and time.time() + delay >= deadline:
                    give_up(
                        exc,
                        attempt,
                        retry,
                        f"the next attempt, in {delay:.3g}s, would start after the deadline",
                    )
                    raise
                attempt = call.attempt = attempt + 1
                self.retried()
                error = f"{type_name(exc)}: {message(exc)}"
                log.warning(
                    "call %s of %r failed (%s); attempt %d in %.3gs",
                    call.call_id,
                    call.atask,
                    error,
                    attempt,
                    delay,
                )
                if call.span is not None:
                    call.span.retrying(attempt, delay, exc)
                if call.events is not None:
                    await call.events.publish(
                        "retrying", call.request, error=error, attempt=attempt, delay=delay
                    )
            await asyncio.sleep(delay)  # before the deadline, checked above; holding no slot
