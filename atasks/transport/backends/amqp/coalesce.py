"""Messages that travel together: what is ready to go to one place in the same turn of the event
loop leaves as one message.

No timer is involved: whatever is put while the loop runs its ready callbacks goes out on the
next turn, so a lone message waits for nothing but that turn, and a fan-out (``gather``) of many
leaves in a few messages, bounded in count and size.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)
Item = TypeVar("Item")

Send = Callable[[Key, list[Item]], Awaitable[None]]


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
        self._ready: dict[Key, list[tuple[Item, asyncio.Future[None]]]] = {}
        self._scheduled = False
        self._sending: set[asyncio.Task[None]] = set()

    async def put(self, key: Key, item: Item) -> None:
        """Send ``item`` with whatever else is put for ``key`` in this turn; returns once its
        message is sent, or raises what sending it raised. Cancelled before the next turn, the
        item is not sent."""
        loop = asyncio.get_running_loop()
        sent = loop.create_future()
        ready = self._ready.get(key)
        if ready is None:
            self._ready[key] = [(item, sent)]
        else:
            ready.append((item, sent))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await sent

    def _flush(self) -> None:
        self._scheduled = False
        ready, self._ready = self._ready, {}
        for key, entries in ready.items():
            chunk: list[tuple[Item, asyncio.Future[None]]] = []
            size = 0
            for entry in entries:
                if entry[1].done():  # cancelled before it went
                    continue
                measured = self._measure(entry[0])
                if chunk and (len(chunk) >= self.count or size + measured > self.size):
                    self._start(key, chunk)
                    chunk, size = [], 0
                chunk.append(entry)
                size += measured
            if chunk:
                self._start(key, chunk)

    def _start(self, key: Key, chunk: list[tuple[Item, asyncio.Future[None]]]) -> None:
        task = asyncio.get_running_loop().create_task(self._deliver(key, chunk))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _deliver(self, key: Key, chunk: list[tuple[Item, asyncio.Future[None]]]) -> None:
        try:
            await self._send(key, [item for item, _ in chunk])
        except Exception as exc:  # each waiting sender gets it
            for _, sent in chunk:
                if not sent.done():
                    sent.set_exception(exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # this delivery was cancelled
                for _, sent in chunk:
                    sent.cancel()
                raise
            # Raised by the send itself (aiormq cancels what is in flight on a connection it
            # finds dead): to the senders, a lost connection, not a cancelled call.
            lost = ConnectionError("the connection was lost while publishing")
            for _, sent in chunk:
                if not sent.done():
                    sent.set_exception(lost)
        except BaseException:
            for _, sent in chunk:
                sent.cancel()
            raise
        else:
            for _, sent in chunk:
                if not sent.done():
                    sent.set_result(None)
