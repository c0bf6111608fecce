"""Direct replies that survive a lost connection: the server side (pure, no broker).

A reply to a direct reply-to address is kept for a while once sent (``RESUMABLE_MAX`` of them,
``RESUMABLE_BYTES`` of bodies, for ``RESUMABLE_FOR``): should its caller's connection drop
before the reply reached it, the caller asks, once reconnected, to resume the call
(``resume.py``) and the reply is sent again to its new address. A call this server has no reply
for yet (still running, or queued) is remembered as moved: its reply goes to the new address
when it is ready.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable

from atasks.transport.backends.amqp.resume import is_direct
from atasks.transport.backends.amqp.server.policies import Memory
from atasks.transport.messages import Reply

RESUMABLE_MAX = 100_000  # replies to direct addresses kept once sent, at most…
RESUMABLE_BYTES = 256 * 1024 * 1024  # …their bodies this many bytes together, at most…
RESUMABLE_FOR = 300.0  # …for at most this long; as many calls moved to a new address


class Sent:
    """Replies by call id, the oldest forgotten beyond ``most`` of them, ``size`` bytes of
    bodies or ``seconds`` of age (1% more of them once over a bound).

    Each is kept as a tuple of strings and numbers, not as its ``Reply``: the garbage collector
    stops tracking such a tuple, and a busy server keeps a hundred thousand of them. Oldest first
    in an ``OrderedDict``, which forgets its first item at once (a dict walks over every slot
    freed at its front since it was last resized: 15 to 190 µs a reply once full)."""

    __slots__ = ("_aged", "_clock", "_items", "bytes", "ids", "most", "seconds", "size")

    def __init__(
        self, most: int, size: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self.size = size
        self.seconds = seconds
        self.bytes = 0
        self._clock = clock
        # call id -> (when, ok, content type, body, error type, error message, traceback)
        self._items: OrderedDict[str, tuple[float, bool, str, bytes, str, str, str]] = OrderedDict()
        self._aged = 0.0  # when the oldest may next be too old (a look then, not each put)
        self.ids = self._items.keys()
        """The call ids of the replies kept (a live view: ``call_id in sent.ids``)."""

    def put(self, reply: Reply) -> None:
        now = self._clock()
        items = self._items
        call_id, body = reply.call_id, reply.body
        old = items.get(call_id)
        if old is not None:  # sent again: its place and its age start over
            self.bytes -= len(old[3])
            del items[call_id]
        items[call_id] = (
            now,
            reply.ok,
            reply.content_type,
            body,
            reply.error_type,
            reply.error_message,
            reply.traceback,
        )
        self.bytes += len(body)
        if len(items) <= self.most and self.bytes <= self.size and now < self._aged:
            return
        self._aged = now + self.seconds / 100  # the oldest outlives its time by 1% at most
        # Past a bound, forget 1% more than it takes: a full memory comes here once in a
        # hundredth of its puts, not at each.
        most = self.most - self.most // 100 if len(items) > self.most else self.most
        size = self.size - self.size // 100 if self.bytes > self.size else self.size
        while len(items) > most or self.bytes > size:
            _, forgotten = items.popitem(last=False)
            self.bytes -= len(forgotten[3])
        while items:  # and those too old
            oldest = next(iter(items.values()))
            if now - oldest[0] < self.seconds:
                break
            items.popitem(last=False)
            self.bytes -= len(oldest[3])

    def get(self, call_id: str) -> Reply | None:
        item = self._items.get(call_id)
        if item is None:
            return None
        _, ok, content_type, body, error_type, error_message, traceback = item
        return Reply(call_id, ok, content_type, body, error_type, error_message, traceback)

    def __len__(self) -> int:
        return len(self._items)


class Resuming:
    """The replies sent to direct addresses lately, and the calls moved to a new address."""

    __slots__ = ("moved", "sent")

    def __init__(
        self,
        most: int = RESUMABLE_MAX,
        seconds: float = RESUMABLE_FOR,
        clock: Callable[[], float] = time.monotonic,
        size: int = RESUMABLE_BYTES,
    ) -> None:
        self.sent = Sent(most, size, seconds, clock)
        self.moved: Memory[str, str] = Memory(most, seconds, clock)

    def sending(self, reply_to: str, reply: Reply) -> tuple[str, bool]:
        """Where ``reply``, addressed to ``reply_to``, goes (its call may have moved), and
        whether that is a direct address: then it is kept before it is sent, so that a resume
        that comes while it is on its way finds it."""
        moved = self.moved.get(reply.call_id) if len(self.moved) else None
        to = moved or reply_to
        direct = is_direct(to)
        if direct:
            self.sent.put(reply)
        return to, direct

    def resume(
        self, call_ids: Iterable[str], reply_to: str, kept: Callable[[str], Reply | None]
    ) -> list[Reply]:
        """The replies to send again to ``reply_to`` now (sent lately, or ``kept`` for a lost
        connection); the other calls are moved there, for when their replies are ready."""
        again = []
        for call_id in call_ids:
            reply = self.sent.get(call_id) or kept(call_id)
            if reply is not None:
                again.append(reply)
            else:
                self.moved.put(call_id, reply_to)
        return again
