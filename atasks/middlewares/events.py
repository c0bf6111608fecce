"""Lifecycle events of the calls a server runs (``atasks events``), where its transport
publishes them: received, started, progress, retrying, and the outcome."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from atasks.calls import Progress
from atasks.events import Event
from atasks.middleware import Call, Middleware, Proceed
from atasks.outcomes import describe

if TYPE_CHECKING:
    from atasks.transport.contract import Transport
    from atasks.transport.messages import Request

log = logging.getLogger("atasks.router")


class Events(Middleware):
    """Serve side: publishes each step of a call through ``transport``, best effort (a call
    never fails for an event). ``received`` is published as a request arrives, before it is
    decoded; the rest by this middleware and, through ``call.events``, by the steps inside."""

    def __init__(self, transport: Transport, namespace: str) -> None:
        self.transport = transport
        self.namespace = namespace

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        call.events = self
        request = call.request
        received = time.monotonic()
        try:
            result = await proceed(call)
        except BaseException as exc:
            if isinstance(exc, Exception):
                await self.publish("failed", request, received, error=describe(exc))
            else:
                await self.publish("cancelled", request, received)
            raise
        await self.publish("succeeded", request, received)
        return result

    async def publish(
        self,
        kind: str,
        request: Request,
        received: float | None = None,
        *,
        error: str | None = None,
        progress: Progress | None = None,
        attempt: int | None = None,
        delay: float | None = None,
    ) -> None:
        """Publish one event of ``request``'s call; its duration counts from ``received``."""
        event = Event(
            kind=kind,
            atask=request.name,
            call_id=request.call_id,
            parent_id=request.parent_id,
            namespace=self.namespace,
            duration=time.monotonic() - received if received is not None else None,
            error=error,
            progress=(
                {"done": progress.done, "total": progress.total, "note": progress.note}
                if progress is not None
                else None
            ),
            attempt=attempt,
            delay=delay,
        )
        try:
            await self.transport.publish_event(event)
        except Exception as exc:  # events are best effort: never fail a call for one
            log.debug("could not publish %s event of %s: %s", kind, request.call_id, exc)
