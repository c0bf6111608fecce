"""How a server stops: SIGINT or SIGTERM, handled from the moment it starts until the process
ends, so that a signal during its start-up (waiting for the broker, registering its atasks) is
a graceful stop too, never the signal's default (exit -15, or ignored as PID 1 of a container)."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Coroutine
from typing import Any

log = logging.getLogger("atasks.runner")

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop:
    """Set by the first SIGINT or SIGTERM. Its handlers stay until the process ends: a second
    signal must not kill the graceful shutdown that follows (``atasks.close()`` with grace)."""

    def __init__(self) -> None:
        self.by: str | None = None
        """The signal that asked for the stop (``"SIGTERM"``), once one did."""
        self.event = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            loop.add_signal_handler(sig, self._received, sig)

    def _received(self, sig: int) -> None:
        if self.by is None:
            self.by = signal.Signals(sig).name
        self.event.set()

    @property
    def requested(self) -> bool:
        return self.event.is_set()

    async def unless_stopped(self, work: Awaitable[None]) -> bool:
        """Await ``work``; ``False`` if a stop came first, in which case ``work`` is cancelled
        and awaited (what it started, it undoes: a server's registration in progress is
        finished and then undone, not left half made)."""
        task = asyncio.ensure_future(work)
        stopper = asyncio.ensure_future(self.event.wait())
        try:
            await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled() and self.requested:
            return False
        task.result()  # its error, if it failed before the stop
        return True


async def serve_until_stopped(stop: Stop, mains: list[Coroutine[Any, Any, None]]) -> None:
    """Serve until SIGINT or SIGTERM; an aiomain that fails stops the server with its error."""
    log.info("serving; SIGINT or SIGTERM stops")
    stopper = asyncio.ensure_future(stop.event.wait())
    pending: set[asyncio.Future[Any]] = {stopper, *map(asyncio.ensure_future, mains)}
    try:
        while not stop.requested:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        log.info("stopping: finishing calls in progress")
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
