"""What the metrics middlewares count, in one place: each served call's outcome (succeeded,
failed, cancelled; a call retried counts once, with its last outcome), its duration (retries
and waits included) and the calls in progress; and the calls waiting for a slot. The
Prometheus middleware (``atasks.metrics``) and the OpenTelemetry one (``atasks.otel_metrics``)
only say where the numbers go.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any, Protocol

from atasks.middleware import Call, Middleware, Proceed
from atasks.namespaces import namespaces
from atasks.router import get_router

SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
OUTCOMES = (SUCCEEDED, FAILED, CANCELLED)


class AtaskMeter(Protocol):
    """Where the numbers of one atask go."""

    def started(self) -> None:
        """A call begins (one more in progress)."""

    def finished(self, outcome: str, seconds: float) -> None:
        """A call ended with ``outcome`` (one of ``OUTCOMES``) after ``seconds``."""


class Measuring(Middleware):
    """A serve-side middleware that measures each call into the ``AtaskMeter`` that
    ``meter(atask)`` makes, once per atask."""

    def __init__(self) -> None:
        self._meters: dict[str, AtaskMeter] = {}

    def meter(self, atask: str) -> AtaskMeter:
        raise NotImplementedError

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        found = self._meters.get(call.atask)
        if found is None:
            found = self._meters[call.atask] = self.meter(call.atask)
        found.started()
        started = time.perf_counter()
        outcome = FAILED
        try:
            result = await proceed(call)
            outcome = SUCCEEDED
            return result
        except asyncio.CancelledError:
            outcome = CANCELLED
            raise
        finally:
            found.finished(outcome, time.perf_counter() - started)


def waiting(names: Iterable[str] | None = None) -> int:
    """Calls waiting for a slot on the routers of ``names`` (``None``: every namespace)."""
    if names is None:
        names = [ns.name for ns in namespaces() if ns.router is not None]
    return sum(get_router(name).statistics().waiting for name in names)
