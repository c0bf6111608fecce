"""What ``atasks queues`` decides, broker aside: which request queues are orphans, and how the
list looks to a person. The broker side is ``atasks.transport.backends.amqp.queues``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from atasks.monitor import columns
from atasks.transport.backends.amqp.topology import Topology


@dataclass(frozen=True)
class QueueRow:
    """A request queue: its atask, messages ready, AMQP consumers, and how many of the servers
    that answered serve its atask."""

    queue: str
    atask: str
    messages: int
    consumers: int
    servers: int

    @property
    def orphan(self) -> bool:
        """Nobody consumes it and no live server serves its atask: its requests wait for a
        server that is not there (an atask renamed or removed, a namespace gone)."""
        return self.consumers == 0 and self.servers == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "orphan": self.orphan}


def atask_of(namespace: str, queue: str) -> str:
    """The atask whose request queue ``queue`` is."""
    prefix = Topology(namespace).prefix
    return queue[len(prefix) :] if queue.startswith(prefix) else queue


def queue_name(namespace: str, name: str) -> str:
    """A queue named on the command line, by its own name or its atask's."""
    topology = Topology(namespace)
    return name if name.startswith(topology.prefix) else topology.request_queue(name)


def orphans(rows: list[QueueRow]) -> list[QueueRow]:
    return [row for row in rows if row.orphan]


COLUMNS = ("queue", "atask", "messages", "consumers", "servers", "")


def format_rows(rows: list[QueueRow], namespace: str) -> str:
    """One line per queue; orphans are marked."""
    if not rows:
        return f"no request queues in namespace {namespace!r}"
    table = [
        (
            r.queue,
            r.atask,
            str(r.messages),
            str(r.consumers),
            str(r.servers),
            "orphan" if r.orphan else "",
        )
        for r in rows
    ]
    return "\n".join(columns(COLUMNS, table))
