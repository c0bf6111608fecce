"""What a running call knows about itself: its id, its deadline, the slot it runs in."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from atasks.router import Slots
    from atasks.transport.base import ProgressSink


@dataclass(slots=True)
class CallScope:
    """The atask call this code runs inside, on its server."""

    call_id: str
    name: str
    deadline: float | None
    slots: Slots | None = None
    report: ProgressSink | None = None
    holds_slot: bool = False
    parked: bool = False
    children: int = 0


current_scope: ContextVar[CallScope | None] = ContextVar("atasks_call", default=None)
_deadline: ContextVar[float | None] = ContextVar("atasks_deadline", default=None)


def current_call_id() -> str | None:
    """The id of the atask call running here, or ``None`` outside one."""
    scope = current_scope.get()
    return scope.call_id if scope is not None else None


def current_deadline() -> float | None:
    """The absolute deadline (``time.time()`` seconds) that atasks awaited here would get."""
    return effective_deadline(None)


@asynccontextmanager
async def deadline(seconds: float) -> AsyncIterator[None]:
    """Every atask awaited inside must finish within ``seconds``; the tighter deadline wins.

    The deadline is absolute and travels with each call, so nested atasks inherit it.
    """
    at = time.time() + seconds
    outer = _deadline.get()
    token = _deadline.set(at if outer is None else min(outer, at))
    try:
        yield
    finally:
        _deadline.reset(token)


def effective_deadline(timeout: float | None) -> float | None:
    """The tightest of: the enclosing ``deadline()``, the serving call's deadline, ``timeout``."""
    candidates = [_deadline.get()]
    scope = current_scope.get()
    if scope is not None:
        candidates.append(scope.deadline)
    if timeout is not None:
        candidates.append(time.time() + timeout)
    present = [c for c in candidates if c is not None]
    return min(present) if present else None
