"""``@atask(limit=N)``: never more than N calls of an atask run at once, across every server of
its namespace (the transport's fleet-wide tokens, ``atasks.transport.tokens``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from atasks.errors import ConfigurationError
from atasks.middleware import Call, Middleware, Proceed
from atasks.transport.contract import Capacity, Transport


def limit_key(atask_name: str) -> str:
    """The token pool of an atask's limit (locks have pools of their own: ``lock.<name>``)."""
    return f"atask.{atask_name}"


class FleetLimit(Middleware):
    """Serve side, innermost (inside retries: each attempt takes its own token): wait for a token
    of the atask's pool, run the rest of the chain, give the token back.

    Waiting for a token holds no local slot: a slot the transport took for the request is given
    back first, and the run takes one after the token. The wait ends at the call's deadline.
    """

    def __init__(self, atask_name: str, size: int, transport: Transport, slots: Capacity) -> None:
        self.key = limit_key(atask_name)
        self.size = size
        self.transport = transport
        self.slots = slots

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        tokens = self.transport.tokens()
        if tokens is None:
            raise ConfigurationError(
                f"atask {call.atask!r} has limit={self.size}, and {self.transport!r} has no "
                "fleet-wide tokens to bound it with"
            )
        request = call.request
        if request is not None and request.slot_taken:
            request.slot_taken = False
            self.slots.give_back_untaken()
        deadline = call.deadline
        if deadline is None:
            token = await tokens.take(self.key, self.size)
        else:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout_at(loop.time() + deadline - time.time()):
                    token = await tokens.take(self.key, self.size)
            except TimeoutError:
                raise TimeoutError(
                    f"atask {call.atask!r} reached its deadline waiting for one of its "
                    f"{self.size} fleet-wide slots"
                ) from None
        try:
            return await proceed(call)
        finally:
            await token.release()
