"""Lifecycle events of atask calls, published by servers that enable them, and progress."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from atasks.calls import Progress as Progress
from atasks.calls import ProgressSink as ProgressSink
from atasks.calls import current_scope

log = logging.getLogger("atasks.events")

KINDS = (
    "received",
    "started",
    "progress",
    "retrying",
    "succeeded",
    "failed",
    "cancelled",
    "dead",  # atasks dead-lettered the request (a fire-and-forget one that failed…)
)
SCHEDULER_KINDS = ("fired", "missed", "elected", "resigned")
"""Events of the scheduler role: a due time fired (``call_id`` names it) or missed, and the
server that ``server`` names taking the role or losing it (``atask`` and ``call_id`` empty)."""
SERVER_ID = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class Event:
    """One step in the life of one call, as seen by the server that runs it."""

    kind: str
    atask: str
    call_id: str
    parent_id: str | None
    namespace: str
    server: str = SERVER_ID
    timestamp: float = field(default_factory=time.time)
    duration: float | None = None  # seconds since received, on the last event of a call
    error: str | None = None
    progress: dict[str, Any] | None = None
    attempt: int | None = None  # retrying: the attempt to come (2 for the first retry)
    delay: float | None = None  # retrying: seconds until it starts

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    def to_json(self) -> bytes:
        return json.dumps(self.as_dict(), separators=(",", ":")).encode()

    @classmethod
    def from_dict(cls, fields: Any) -> Event:
        if not isinstance(fields, dict) or fields.get("kind") not in (*KINDS, *SCHEDULER_KINDS):
            raise ValueError("not an atasks event")
        values: dict[str, Any] = {name: fields.get(name) for name in cls.__dataclass_fields__}
        return cls(**values)


def encode_batch(events: list[Event]) -> bytes:
    """Events as one message body: a JSON list, oldest first."""
    return json.dumps([event.as_dict() for event in events], separators=(",", ":")).encode()


def decode_batch(body: bytes) -> list[Event]:
    """The events of one message body; raises ``ValueError`` for anything else."""
    items = json.loads(body)
    if not isinstance(items, list):
        raise ValueError("not a list of atasks events")
    return [Event.from_dict(item) for item in items]


ProgressListener = Callable[[Progress], Any]
"""Called with each progress report: a plain function, or an ``async def`` (awaited)."""

_listener: ContextVar[ProgressListener | None] = ContextVar("atasks_progress", default=None)


progress_listener = _listener.get
"""The progress listener in force here, if any (``progress_listener()``)."""


async def deliver_progress(listener: ProgressListener, progress: Progress) -> None:
    """Hand ``progress`` to ``listener``, awaiting it if it is async. A listener that raises is
    logged, never propagated: a failing observer must not fail the call it observes.

    Every transport delivers progress reports through this one function, so they behave alike.
    """
    try:
        result = listener(progress)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception(
            "progress listener %r failed on a report of call %s; the call goes on",
            listener,
            progress.call_id,
        )


class ProgressRelay:
    """Hands a call's progress reports to ``listener`` in the background, one after the other
    in the order they came, so that a slow listener never holds up the call's frames. A frame
    listener (``__call__``): anything but a ``Progress`` is ignored."""

    __slots__ = ("_last", "_listener")

    def __init__(self, listener: ProgressListener) -> None:
        self._listener = listener
        self._last: asyncio.Future[None] | None = None

    def __call__(self, frame: object) -> None:
        if isinstance(frame, Progress):
            self._last = asyncio.ensure_future(
                _after(self._last, deliver_progress(self._listener, frame))
            )

    async def flushed(self) -> None:
        """Once every report relayed so far has reached the listener."""
        if self._last is not None:
            await asyncio.wait({self._last})


async def _after(previous: asyncio.Future[None] | None, then: Awaitable[None]) -> None:
    if previous is not None:
        await asyncio.wait({previous})
    await then


@asynccontextmanager
async def observe_progress(listener: ProgressListener) -> AsyncIterator[None]:
    """Atasks awaited inside send their ``atasks.progress()`` reports to ``listener``, a plain
    function or an ``async def``. An exception raised by the listener is logged and ignored."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


async def progress(done: float, total: float | None = None, note: str = "") -> None:
    """Report the progress of the atask running here: to the events stream, and to the
    awaiting side if it observes progress. Does nothing outside an atask."""
    scope = current_scope.get()
    if scope is None or scope.report is None:
        return
    await scope.report(Progress(scope.call_id, scope.name, done, total, note))
