"""How many atasks a server runs at once, without deadlocking on its own children.

An atask holds a slot while its own code runs, awaiting I/O included. While it is suspended with
atask calls of its own in flight, it lends its slot to other atasks — its children may need it —
and it takes a slot again before its own code goes on. That holds however the children were
started: awaited directly, through ``gather``, a ``TaskGroup`` or ``create_task``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

from atasks.calls import CallScope
from atasks.errors import ConfigurationError

T = TypeVar("T")


NOT_TAKEN: Any = object()
"""``Slots.drive``'s ``first`` when the atask's first step is still to take."""


class Slots:
    """At most ``limit`` atasks hold a slot at once; waiters are served first come, first
    served, before any new request."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ConfigurationError(f"concurrency must be at least 1, not {limit}")
        self.limit = limit
        self.running = 0  # slots held
        self.parked = 0  # atasks lending their slot while their children run
        # Who waits for a slot: an atask's scope, or (None) a request not yet handled.
        self._waiters: deque[tuple[asyncio.Future[Any], CallScope | None]] = deque()
        self._listeners: list[Callable[[], None]] = []

    @property
    def free(self) -> int:
        """Slots a new request could take right now (none while someone waits for one)."""
        return 0 if self._waiters else self.limit - self.running

    @property
    def waiting(self) -> int:
        """Atasks waiting for a slot."""
        return len(self._waiters)

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def try_take(self) -> bool:
        """Take a free slot for a request not yet handled (``adopt`` gives it to its scope)."""
        if self.free <= 0:
            return False
        self.running += 1
        self._changed()
        return True

    def give_back_untaken(self) -> None:
        """A slot from ``try_take`` that no scope adopted."""
        self._give()

    def reserve(self) -> asyncio.Future[bool]:
        """Wait, behind the atasks waiting already, for a slot for a request not yet handled:
        True once that slot is taken, as by ``try_take``; False once ``unreserve`` stopped the
        wait."""
        granted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiters.append((granted, None))
        return granted

    def unreserve(self, granted: asyncio.Future[bool]) -> None:
        """Stop waiting for ``granted`` (from ``reserve``), or give back the slot it got and no
        request went on with."""
        if not granted.done():
            self._waiters.remove((granted, None))
            granted.set_result(False)
            if self._listeners:
                self._changed()
        elif granted.result():
            self._give()

    def take_now(self, scope: CallScope) -> bool:
        """Whether ``scope`` holds a slot, taking a free one if it does not and one is free
        (``take`` waits for one)."""
        if scope.holds_slot:
            return True
        if self._waiters or self.running >= self.limit:
            return False
        self.running += 1
        scope.holds_slot = True  # _hold, inline: every call passes here
        if scope.lent:
            scope.lent = False
            self.parked -= 1
        if self._listeners:
            self._changed()
        return True

    async def take(self, scope: CallScope) -> None:
        """Wait for a slot for ``scope``."""
        if self.take_now(scope):
            return
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((granted, scope))
        try:
            await granted
        except asyncio.CancelledError:
            if granted.done() and not granted.cancelled():  # granted as we were cancelled
                self.release(scope)
            else:
                self._waiters.remove((granted, scope))
            raise

    def release(self, scope: CallScope) -> None:
        if scope.holds_slot:
            scope.holds_slot = False
            self._give()

    def _give(self) -> None:
        while self._waiters:
            granted, scope = self._waiters.popleft()
            if not granted.done():
                if scope is None:  # a request's: taken, as by try_take
                    granted.set_result(True)
                    return
                self._hold(scope)
                granted.set_result(None)
                return
        self.running -= 1
        self._changed()

    def _hold(self, scope: CallScope) -> None:
        scope.holds_slot = True
        if scope.lent:
            scope.lent = False
            self.parked -= 1

    def _lend(self, scope: CallScope) -> None:
        if scope.holds_slot and not scope.done:
            scope.lent = True
            self.parked += 1
            self.release(scope)

    # --- what the router tells: calls made by an atask, its steps, its end ------------------

    def call_started(self, scope: CallScope) -> bool:
        """``scope``'s atask makes a call; True if made by its own task (awaited directly)."""
        current = asyncio.current_task()
        if scope.owner is None:  # made in the atask's first step, which its own task takes
            scope.owner = current
        direct = current is scope.owner
        if direct:
            scope.direct += 1
        else:
            scope.children += 1
            if scope.suspended:
                self._lend(scope)
        return direct

    async def call_ended(self, scope: CallScope, direct: bool) -> None:
        """The call is over; a direct one gets its atask a slot again before its code goes on."""
        if not direct:
            scope.children -= 1
            return
        scope.direct -= 1
        if scope.direct == 0 and not scope.done:
            await self.take(scope)

    def finish(self, scope: CallScope) -> None:
        """``scope``'s atask has ended: give back what it holds, whatever its children do."""
        scope.done = True
        if scope.lent:
            scope.lent = False
            self.parked -= 1
        if scope.holds_slot:
            scope.holds_slot = False
            if self._waiters:
                self._give()
            else:  # _give, inline: every call passes here
                self.running -= 1
                if self._listeners:
                    self._changed()

    def drive(
        self, coroutine: Coroutine[Any, Any, T], scope: CallScope, first: Any = NOT_TAKEN
    ) -> Awaitable[T]:
        """Await ``coroutine`` (the atask) so that it lends its slot while suspended with calls
        in flight, and takes one again before each step of its own; ``first``: what its first
        step yielded, when the caller took that step already (holding the slot)."""
        return _Driven(coroutine, scope, self, first)


class _Driven(Generic[T]):
    __slots__ = ("coroutine", "first", "scope", "slots")

    def __init__(
        self, coroutine: Coroutine[Any, Any, T], scope: CallScope, slots: Slots, first: Any
    ) -> None:
        self.coroutine = coroutine
        self.scope = scope
        self.slots = slots
        self.first = first

    def __await__(self) -> Generator[Any, Any, T]:
        send, throw = self.coroutine.send, self.coroutine.throw
        scope, slots = self.scope, self.slots
        value: Any = None
        error: BaseException | None = None
        step = self.first
        while True:
            if step is NOT_TAKEN:
                if not scope.holds_slot and not scope.direct and not scope.done:
                    try:  # lent while suspended: the atask's own code needs a slot again
                        yield from slots.take(scope).__await__()
                    except BaseException as exc:  # e.g. cancelled meanwhile: the atask sees it
                        error = exc
                try:
                    step = send(value) if error is None else throw(error)
                except StopIteration as stop:
                    result: T = stop.value
                    return result
            scope.suspended = True
            if scope.holds_slot and (scope.direct or scope.children):
                slots._lend(scope)
            try:
                value, error = (yield step), None
            except BaseException as exc:  # delivered into the coroutine at its next step
                value, error = None, exc
            scope.suspended = False
            step = NOT_TAKEN
