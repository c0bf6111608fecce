"""Messages that travel together: what is ready to go to one place in the same turn of the event
loop leaves as one message.

No timer is involved: whatever is put while the loop runs its ready callbacks goes out on the
next turn, so a lone message waits for nothing but that turn, and a fan-out (``gather``) of many
leaves in a few messages, bounded in count and size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, Protocol, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")

Send = Callable[[Key, list[Item]], Awaitable[None]]


class Waiter(Protocol):
    """Who waits for an item to be sent: a future, or anything with a future's four methods."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...

    def cancel(self) -> bool: ...


Entry = tuple[Item, Waiter, bool]  # the item, who waits for it, whether quietly


class Unsent(Exception):
    """Set on a quiet waiter (``Coalescer.add``) whose item could not be sent: ``error`` says
    why."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class Coalescer(Generic[Key, Item]):
    """Sends items put in the same turn of the loop for the same key together, at most ``count``
    of them and about ``size`` bytes (as ``measure`` counts them) to a message; an item larger
    than ``size`` goes alone."""

    def __init__(
        self, send: Send[Key, Item], *, count: int, size: int, measure: Callable[[Item], int]
    ) -> None:
        self._send = send
        self.count = count
        self.size = size
        self._measure = measure
        self._ready: dict[Key, list[Entry[Item]]] = {}
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def put(self, key: Key, item: Item) -> None:
        """Send ``item`` with whatever else is put for ``key`` in this turn; returns once its
        message is sent, or raises what sending it raised. Cancelled before the next turn, the
        item is not sent."""
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(key, (item, sent, False))
        await sent

    def add(self, key: Key, item: Item, waiter: Waiter, *, quiet: bool = True) -> None:
        """Send ``item`` with whatever else is put for ``key`` in this turn, and return at once.
        ``quiet``: ``waiter`` (say, a future its sender awaits for a reply anyway) hears only
        of a failure, as an ``Unsent`` exception, and is left alone once the item is sent;
        else it hears either way, as from ``put``. Done before the next turn (cancelled,
        answered), the item is not sent."""
        self._queue(key, (item, waiter, quiet))

    def _queue(self, key: Key, entry: Entry[Item]) -> None:
        ready = self._ready.get(key)
        if ready is None:
            self._ready[key] = [entry]
        else:
            ready.append(entry)
        if not self._scheduled:
            self._scheduled = True
            self._keep(asyncio.get_running_loop().create_task(self._flush()))

    async def _flush(self) -> None:
        """Send what was put in the turn that just ended: the first message in this task (a
        lone item waits for one turn, no more), each other one in a task of its own."""
        self._scheduled = False
        ready, self._ready = self._ready, {}
        first: tuple[Key, list[Entry[Item]]] | None = None
        for key, entries in ready.items():
            chunk: list[Entry[Item]] = []
            size = 0
            for entry in entries:
                if entry[1].done():  # cancelled before it went
                    continue
                measured = self._measure(entry[0])
                if chunk and (len(chunk) >= self.count or size + measured > self.size):
                    first = self._start(key, chunk, first)
                    chunk, size = [], 0
                chunk.append(entry)
                size += measured
            if chunk:
                first = self._start(key, chunk, first)
        if first is not None:
            await self._deliver(*first)

    def _start(
        self,
        key: Key,
        chunk: list[Entry[Item]],
        first: tuple[Key, list[Entry[Item]]] | None,
    ) -> tuple[Key, list[Entry[Item]]]:
        """Keep ``chunk`` for the flush itself to send, or start sending it if it is not the
        first; returns the first."""
        if first is None:
            return key, chunk
        self._keep(asyncio.get_running_loop().create_task(self._deliver(key, chunk)))
        return first

    def _keep(self, task: asyncio.Task[None]) -> None:
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, key: Key, chunk: list[Entry[Item]]) -> None:
        try:
            await self._send(key, [item for item, _, _ in chunk])
        except Exception as exc:  # each waiting sender gets it
            _failed(chunk, exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this delivery was cancelled
                for _, sent, _ in chunk:
                    sent.cancel()
                raise
            # Raised by the send itself (aiormq cancels what is in flight on a connection it
            # finds dead): to the senders, a lost connection, not a cancelled call.
            _failed(chunk, ConnectionError("the connection was lost while publishing"))
        except BaseException:
            for _, sent, _ in chunk:
                sent.cancel()
            raise
        else:
            for _, sent, quiet in chunk:
                if not quiet and not sent.done():
                    sent.set_result(None)


def _failed(chunk: list[Entry[Any]], exc: Exception) -> None:
    for _, sent, quiet in chunk:
        if not sent.done():
            sent.set_exception(Unsent(exc) if quiet else exc)
