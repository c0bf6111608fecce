"""The scheduler role of a namespace, as a transport provides it: held by one process at a time,
with a state that only its holder changes, together with the firings it sends."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Protocol

from atasks.errors import TransportError
from atasks.transport.messages import DeadRequest, Reply, Request, dead_reason

Failed = tuple[Request, Reply]
"""A fired call that failed (after its retries), and its outcome: to dead-letter."""

log = logging.getLogger("atasks.schedules")

OnOutcome = Callable[[Reply], None]
"""Told the outcome of each call a holder fired, by whichever process holds the role then."""


class SeatLost(TransportError):
    """This process no longer holds the scheduler role (its connection or channel is gone)."""


class SchedulerSeat(ABC):
    """The scheduler role: ``take()`` waits until this process holds it, ``commit()`` fires
    calls and replaces the state in one step, ``wait_lost()`` returns when the role is gone.

    The outcome of each fired call is handed to ``on_outcome`` once the holder receives it; it
    counts as handled once the next ``commit()`` succeeds (before that, a new holder gets it).
    """

    on_outcome: OnOutcome | None = None
    on_state: Callable[[bytes], None] | None = None
    """Told of any other state found while holding the role (the holder merges it)."""

    @abstractmethod
    async def take(self) -> bytes | None:
        """Wait until this process holds the role; the last committed state (``None``: none)."""

    @abstractmethod
    async def commit(
        self, firings: list[Request], state: bytes, failed: Sequence[Failed] = ()
    ) -> None:
        """Send each request as a call whose outcome comes back to the role's holder, dead-letter
        each ``failed`` call with its last error, and make ``state`` the state — all or nothing.
        Raises ``SeatLost`` if the role is gone."""

    @abstractmethod
    async def wait_lost(self) -> None:
        """Return once this process no longer holds the role."""

    @abstractmethod
    async def release(self) -> None:
        """Give up the role for now (another process takes it over); ``take()`` competes again."""

    @abstractmethod
    async def close(self) -> None:
        """Give up the role for good; idempotent."""


class _Loopback(Protocol):
    """What a loopback seat needs of its transport (typed here: the transport imports this)."""

    dead_letters: list[DeadRequest]

    async def send_request(self, request: Request) -> Reply: ...


class LoopbackSeat(SchedulerSeat):
    """The one process of a loopback transport holds the role; its state lives in memory."""

    def __init__(self, transport: _Loopback) -> None:
        self.transport = transport
        self._state: bytes | None = None
        self._closed = asyncio.Event()
        self._calls: set[asyncio.Task[None]] = set()

    async def take(self) -> bytes | None:
        if self._closed.is_set():
            await asyncio.Future()  # never again: the process gave the role up
        return self._state

    async def commit(
        self, firings: list[Request], state: bytes, failed: Sequence[Failed] = ()
    ) -> None:
        if self._closed.is_set():
            raise SeatLost("the scheduler role was given up")
        self._state = state
        for request, reply in failed:
            error = f"{reply.error_type}: {reply.error_message}"
            self.transport.dead_letters.append(DeadRequest(request, dead_reason(reply), error))
        for request in firings:
            task = asyncio.get_running_loop().create_task(self._fire(request))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _fire(self, request: Request) -> None:
        try:
            reply = await self.transport.send_request(request)
        except Exception as exc:
            reply = Reply.failure(request.call_id, exc)
        if self.on_outcome is not None and not self._closed.is_set():
            self.on_outcome(reply)

    async def wait_lost(self) -> None:
        await self._closed.wait()

    async def release(self) -> None:
        """Nobody else can take it: the role stays here, and ``take()`` returns the state."""

    async def close(self) -> None:
        self._closed.set()
        for task in list(self._calls):
            task.cancel()
        for task in list(self._calls):
            with contextlib.suppress(asyncio.CancelledError):
                await task
