"""How much a server lets the broker send it, without global QoS.

RabbitMQ fixes a consumer's prefetch when the consumer is created (4.3 treats even a "global"
``basic.qos`` that way, and quorum queues refuse global QoS), while a server's room changes all
the time: an atask awaiting other atasks lends its slot. So each request queue has one active
consumer whose prefetch was right when it was made, and is replaced when it no longer fits:

- no credit left while slots are free (its deliveries are all parked on children): a fresh
  consumer with the free slots as prefetch, or a recursive fan-out would deadlock;
- far less credit than free slots: a fresh consumer, so the queue is not served a few at a time;
- a delivery arriving with no slot free is handed back to the queue for an idle server (the
  queue's consumer is cancelled until a slot frees): a busy server never sits on requests.

A cancelled consumer's unacked deliveries stay with the channel and are acked as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_PREFETCH = 65_535  # basic.qos prefetch-count is a 16-bit field


@dataclass(slots=True)
class Intake:
    """The consumer of one request queue, as the server sees it."""

    name: str
    tag: str | None = None  # the active consumer; None while paused
    prefetch: int = 0
    # Deliveries whose handling has not finished, by consumer: the first deliveries of a new
    # consumer can arrive before the broker's answer that names it.
    live: dict[str, int] = field(default_factory=dict)
    stale: list[str] = field(default_factory=list)  # consumers to cancel

    @property
    def credit(self) -> int:
        """How many more requests the broker may send the active consumer."""
        if self.tag is None:
            return 0
        return self.prefetch - self.live.get(self.tag, 0)

    def plan(self, free: int) -> int | None:
        """The prefetch of the consumer this queue needs now, or ``None`` to keep what it has."""
        if free <= 0:
            return None
        credit = self.credit
        if credit <= 0 or credit * 2 < free:
            return min(free, MAX_PREFETCH)
        return None

    def replaced(self, tag: str, prefetch: int) -> None:
        """A new consumer took over; the old one, if any, is to be cancelled."""
        if self.tag is not None:
            self.stale.append(self.tag)
        self.tag, self.prefetch = tag, prefetch

    def pause(self) -> None:
        """Stop taking requests until a slot frees."""
        if self.tag is not None:
            self.stale.append(self.tag)
        self.tag, self.prefetch = None, 0

    def reset(self) -> None:
        """The connection is gone, and every consumer with it."""
        self.tag, self.prefetch = None, 0
        self.live.clear()
        self.stale.clear()

    def delivered(self, tag: str) -> None:
        self.live[tag] = self.live.get(tag, 0) + 1

    def handled(self, tag: str) -> None:
        left = self.live.get(tag, 0) - 1
        if left > 0:
            self.live[tag] = left
        else:
            self.live.pop(tag, None)
