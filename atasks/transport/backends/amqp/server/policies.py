"""The serve side's policies, as pure functions and small objects: no broker, no event loop.

- ``verdict``: what the deaths of servers holding a request make of it (run, count, isolate, dead);
- ``Memory``: what is remembered for a while (kept replies, cancelled calls), within bounds;
- ``settle_batch``: when a batch message is acked, and which of its calls are handed back.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

ISOLATE_AFTER = 2  # deaths of servers holding a request, after which it runs alone
KEPT_MAX = 100_000  # replies kept for a lost connection, at most…
KEPT_FOR = 600.0  # …and for at most this long
CANCELLED_KEPT = 100_000  # ids of cancelled calls remembered, at most…
CANCELLED_FOR = 3600.0  # …and for at most this long


class Verdict(enum.Enum):
    """What a delivery's count of dead servers makes of it."""

    RUN = "run"  # no death, or the quorum queue counts them
    COUNT = "count"  # classic queue: back to its queue with the death counted
    ISOLATE = "isolate"  # to the suspects queue, to run alone
    DEAD = "dead"  # dead-lettered at the delivery limit


def counts_only_deaths(queue_type: str, broker_major: int | None) -> bool:
    """Whether a request's count of deliveries counts only its servers' deaths. Not on
    RabbitMQ 3.x quorum queues: they also count a delivery on its way to a consumer that was
    cancelled, as servers' consumers are whenever their free slots change. There, requests are
    not isolated (a fan-out would deadlock on suspects that are not)."""
    return queue_type == "classic" or broker_major is None or broker_major >= 4


def verdict(
    *,
    deaths: int,
    counted: int,
    died: bool,
    limit: int,
    queue_type: str,
    broker_major: int | None,
    isolated: bool,
    unisolated: bool,
) -> Verdict:
    """What to do with a delivery that ``deaths`` servers died holding (this delivery
    included; ``counted`` of them were counted in it before; ``died``: its last server did).

    ``isolated``: delivered from the suspects queue; ``unisolated``: sent back from there to its
    atask's queue (it is not isolated again)."""
    if deaths >= limit:
        return Verdict.DEAD
    if isolated:  # a suspect that took its server down goes back in line, counted
        return Verdict.ISOLATE if deaths > counted else Verdict.RUN
    if (
        deaths >= max(1, min(ISOLATE_AFTER, limit - 1))
        and not unisolated
        and counts_only_deaths(queue_type, broker_major)
    ):
        return Verdict.ISOLATE
    if died and queue_type == "classic":
        return Verdict.COUNT
    return Verdict.RUN


K = TypeVar("K")
V = TypeVar("V")


class Memory(Generic[K, V]):
    """Values remembered by key, at most ``most`` of them and each for at most ``seconds``:
    storing one forgets the oldest beyond either bound. Storing a key again keeps its place
    in line (its age restarts). An ``OrderedDict``: it forgets its first item at once, where a
    dict walks over every slot freed at its front."""

    __slots__ = ("_clock", "_items", "most", "seconds")

    def __init__(
        self, most: int, seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.most = most
        self.seconds = seconds
        self._clock = clock
        self._items: OrderedDict[K, tuple[V, float]] = OrderedDict()

    def put(self, key: K, value: V) -> None:
        now = self._clock()
        self._items[key] = (value, now)
        items = self._items
        while items:  # forget the oldest
            _, at = next(iter(items.values()))
            if len(items) <= self.most and now - at < self.seconds:
                break
            items.popitem(last=False)

    def get(self, key: K) -> V | None:
        item = self._items.get(key)
        return None if item is None else item[0]

    def forget(self, key: K) -> None:
        self._items.pop(key, None)

    def values(self) -> Iterator[V]:
        return (value for value, _ in self._items.values())

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


class Outcome(enum.Enum):
    """How one call of a batch ended, as its message sees it."""

    ANSWERED = "answered"  # its reply is sent (see settlement._replying), or it was cancelled
    BACK = "back"  # to hand back to the queue: the server stops, or the broker refused the reply
    KEPT = "kept"  # its reply waits for the connection to come back
    ELSEWHERE = "elsewhere"  # back in the queue already, in a batch of its own (overflow.py)


def cancelled_outcome(by_caller: bool) -> Outcome:
    """A call of a batch that was cancelled: by its caller (nothing to answer), or because its
    server stops (to hand back)."""
    return Outcome.ANSWERED if by_caller else Outcome.BACK


@dataclass(frozen=True, slots=True)
class BatchSettlement:
    """How a batch message settles once each of its calls here has ended."""

    hand_back: tuple[str, ...]  # calls to queue again, in a batch of their own, in order
    ack: bool  # ack the message now (else it waits: a reply is kept for the next connection)


def settle_batch(outcomes: Mapping[str, Outcome]) -> BatchSettlement:
    """Settle a batch given each call's ``Outcome`` (calls sent elsewhere already left out):
    the calls to hand back are those a stopping server did not finish or whose reply the
    broker refused; the message is acked unless a reply waits for the connection to come
    back (then its redelivery is answered from what is kept)."""
    back = tuple(call_id for call_id, outcome in outcomes.items() if outcome is Outcome.BACK)
    return BatchSettlement(
        hand_back=back, ack=all(o is not Outcome.KEPT for o in outcomes.values())
    )
