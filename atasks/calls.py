"""What a running call knows about itself: its id, its deadline, its priority, the slot it runs
in."""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Progress:
    """What a running atask reported with ``atasks.progress()``."""

    call_id: str
    atask: str
    done: float
    total: float | None = None
    note: str = ""


ProgressSink = Callable[[Progress], Awaitable[None]]
"""Takes the progress reports of one call."""


class SlotPool(Protocol):
    """The slots a server runs atasks in (``atasks.slots.Slots``), as calls see them."""

    def call_started(self, scope: CallScope) -> bool: ...

    async def call_ended(self, scope: CallScope, direct: bool) -> None: ...


@dataclass(slots=True)
class CallScope:
    """The atask call this code runs inside, on its server."""

    call_id: str
    name: str
    deadline: float | None
    slots: SlotPool | None = None
    parent_id: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)  # the request's: traceparent…
    report: ProgressSink | None = None
    owner: asyncio.Task[Any] | None = None  # the task running its own code, once it matters
    holds_slot: bool = False
    lent: bool = False  # its slot is lent while its calls are in flight
    suspended: bool = False  # its own code is waiting for something
    direct: int = 0  # calls in flight awaited by its own task
    children: int = 0  # calls in flight made from other tasks (gather, create_task)
    done: bool = False


current_scope: ContextVar[CallScope | None] = ContextVar("atasks_call", default=None)
_deadline: ContextVar[float | None] = ContextVar("atasks_deadline", default=None)
_priority: ContextVar[int | None] = ContextVar("atasks_priority", default=None)

LOWEST_PRIORITY, NORMAL_PRIORITY, HIGHEST_PRIORITY = 0, 4, 9
"""A call made with no priority in force counts as ``NORMAL_PRIORITY`` where a queue orders them
(as RabbitMQ 4.x quorum queues count a message without one)."""


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
    return scope_deadline(current_scope.get(), timeout)


def scope_deadline(scope: CallScope | None, timeout: float | None) -> float | None:
    """``effective_deadline`` with the current scope already looked up."""
    tightest = _deadline.get()
    if scope is not None:
        inherited = scope.deadline
        if inherited is not None and (tightest is None or inherited < tightest):
            tightest = inherited
    if timeout is not None:
        own = time.time() + timeout
        if tightest is None or own < tightest:
            tightest = own
    return tightest


def check_priority(value: object, where: str) -> int:
    """``value`` if it is a priority, else ``TypeError``/``ValueError`` naming ``where``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(
            f"{where}: a priority is a whole number from {LOWEST_PRIORITY} to "
            f"{HIGHEST_PRIORITY}, not {value!r}"
        )
    if not LOWEST_PRIORITY <= value <= HIGHEST_PRIORITY:
        raise ValueError(
            f"{where}: priority {value} is out of range: {LOWEST_PRIORITY} (lowest) to "
            f"{HIGHEST_PRIORITY} (highest); calls without one count as {NORMAL_PRIORITY}"
        )
    return value


def priority_from(value: object) -> int | None:
    """The priority a request arrived with, or ``None`` for none or nonsense."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if LOWEST_PRIORITY <= value <= HIGHEST_PRIORITY else None
    return None


@asynccontextmanager
async def priority(level: int) -> AsyncIterator[None]:
    """Every atask awaited inside is sent with priority ``level``, 0 (lowest) to 9 (highest;
    calls without a priority count as 4), and the atasks those run await inherit it; the
    innermost block wins.

    Where requests wait in a queue that orders priorities, a waiting request of higher priority
    is started before waiting ones of lower priority of the same atask.
    """
    token = _priority.set(check_priority(level, "atasks.priority()"))
    try:
        yield
    finally:
        _priority.reset(token)


def current_priority() -> int | None:
    """The priority in force here, which atasks awaited here are sent with: the innermost
    ``priority()`` block's, else that of the call being served. ``None`` if none (then each
    atask is sent with its own ``@atask(priority=)``, if it has one)."""
    return _priority.get()


def effective_priority(default: int | None) -> int | None:
    """The priority of a call made here: the one in force, else the atask's ``default``."""
    level = _priority.get()
    return level if level is not None else default


def enter_priority(level: int | None) -> Token[int | None] | None:
    """On a server: put the priority a call arrived with in force while it runs (so the calls
    it makes inherit it); returns what ``leave_priority`` undoes."""
    return _priority.set(level) if level is not None else None


def leave_priority(token: Token[int | None] | None) -> None:
    if token is not None:
        _priority.reset(token)


_ids = itertools.count()
_id_prefix = os.urandom(8).hex()


def _new_id_prefix() -> None:
    """A forked child gets a prefix of its own: with its parent's, both would issue the same ids."""
    global _ids, _id_prefix
    _ids = itertools.count()
    _id_prefix = os.urandom(8).hex()


os.register_at_fork(after_in_child=_new_id_prefix)


def new_call_id() -> str:
    """A call id unique across processes: a random per-process prefix and a counter."""
    return f"{_id_prefix}{next(_ids):x}"
