"""Context variables that travel with calls (``atasks.propagate``): captured where a call is
made, in force where it runs."""

from __future__ import annotations

from typing import Any

from atasks.middleware import Call, Middleware, Proceed
from atasks.propagation import apply, capture, restore


class Capture(Middleware):
    """Call side: the values of the propagated variables set here travel in the call's body."""

    async def call(self, call: Call, proceed: Proceed) -> Any:
        call.values = capture() or None
        return await proceed(call)


class Apply(Middleware):
    """Serve side: what the caller's context carried is in force while the atask runs, and
    undone after (for transports that serve in a context of their own)."""

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        restoring = apply(call.values) if call.values else None
        try:
            return await proceed(call)
        finally:
            if restoring:
                restore(restoring)
