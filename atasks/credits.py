"""The window of a stream, on its server: how many more items its caller will take.

A stream starts with ``window`` credits; each item spends one, and the caller grants credits
back as it consumes items, so the server runs ahead of the consumer by at most ``window`` items.
Over a broker the caller also grants nothing (zero credits) every few seconds while it iterates:
a caller that stays silent longer than ``idle`` seconds is gone, and its stream is closed.
"""

from __future__ import annotations

import asyncio
import time

from atasks.errors import ATasksError


class CallerGone(ATasksError):
    """The caller of a stream stopped granting credits (it was killed or lost the broker)."""


class Credits:
    """Credits of one stream, granted by its caller and spent by its server."""

    __slots__ = ("_available", "_heard", "_idle", "_waiter")

    def __init__(self, window: int, idle: float | None = None) -> None:
        self._available = window
        self._idle = idle
        self._heard = time.monotonic()
        self._waiter: asyncio.Future[None] | None = None

    @property
    def available(self) -> int:
        return self._available

    def grant(self, credits: int) -> None:
        """The caller took ``credits`` more items (zero: it is still there)."""
        self._heard = time.monotonic()
        self._available += max(credits, 0)
        waiter = self._waiter
        if waiter is not None and not waiter.done() and self._available > 0:
            waiter.set_result(None)

    async def take(self) -> None:
        """Spend one credit, waiting for the caller to grant one. Raises ``CallerGone`` when the
        caller has said nothing for ``idle`` seconds."""
        idle = self._idle
        while True:
            silent = time.monotonic() - self._heard
            if idle is not None and silent > idle:
                raise CallerGone(
                    f"the caller of this stream said nothing for {silent:.1f}s (over {idle:g}s): "
                    "it is gone"
                )
            if self._available > 0:
                self._available -= 1
                return
            self._waiter = waiter = asyncio.get_running_loop().create_future()
            try:
                if idle is None:
                    await waiter
                else:
                    await asyncio.wait({waiter}, timeout=idle - silent + 0.01)
            finally:
                self._waiter = None
