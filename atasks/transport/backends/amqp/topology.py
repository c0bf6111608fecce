"""What a namespace is made of on the broker: names, and the arguments each queue is declared
with. Shared by the transport and by ``atasks inspect`` / ``atasks events``.

Per namespace ``ns``:

- ``atasks.<ns>.<atask>``: one request queue per atask (quorum by default), declared by its
  servers and by whoever fire-and-forgets a request to it (so none is refused or lost before
  a server starts), with the broker's delivery limit and at-least-once dead-lettering;
- ``atasks-suspects.<ns>``: requests that were running when their server died, each sent
  here alone by the next server that gets it; every server consumes it one request at a time,
  so a request that kills its servers takes no other call down with it again (same type and
  arguments as the request queues);
- ``atasks.<ns>.broadcast``: direct exchange for broadcast requests, routing key = atask name;
  each server binds an exclusive queue of its own to it under the names it serves;
- ``atasks.<ns>.control``: fanout exchange for cancellations and inspect requests, each server
  binds an exclusive queue to it;
- ``atasks.<ns>.events``: topic exchange for lifecycle events;
- ``atasks-replies.<ns>.<host>.<pid>.<random>``: each caller's reply queue (quorum, expiring
  once unused), unless it uses direct reply-to;
- ``atasks-leases.<ns>``: fanout exchange and unconsumed queue where leases of long calls wait
  and expire back to their request queue (see ``lease``);
- ``atasks-schedules.<ns>``: quorum queue with a single active consumer, holding the scheduler
  state and the outcomes of scheduled calls; its active consumer holds the scheduler role (see
  ``seat``);
- ``atasks-dead.<ns>``: fanout exchange for dead letters, bound to the queue
  ``atasks-dead.<ns>`` (kept for people, expiring after ``dead_letter_ttl``) and to
  ``atasks-dead.<ns>.notify`` (consumed by every transport of the namespace, which tells the
  awaiting caller). Internal queues start with ``atasks-`` so no atask name can collide.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from atasks.calls import HIGHEST_PRIORITY
from atasks.errors import ConfigurationError

QueueType = Literal["quorum", "classic"]
QUEUE_TYPES: tuple[QueueType, ...] = ("quorum", "classic")
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_QUEUE_GRACE = 60.0  # seconds a reply queue outlives its caller's patience


@dataclass(frozen=True)
class Topology:
    """Names and declare arguments for one namespace."""

    namespace: str
    queue_type: QueueType = "quorum"
    delivery_limit: int = 5
    dead_letter_ttl: float = 7 * 24 * 3600.0
    max_priority: int | None = None  # classic queues' x-max-priority; None: no priorities

    def __post_init__(self) -> None:
        if self.queue_type not in QUEUE_TYPES:
            raise ConfigurationError(
                f"queue_type must be one of {', '.join(QUEUE_TYPES)}, not {self.queue_type!r}"
            )
        if self.delivery_limit < 1:
            raise ConfigurationError(
                f"delivery_limit must be at least 1, not {self.delivery_limit}"
            )
        if self.max_priority is not None:
            if self.queue_type != "classic":
                raise ConfigurationError(
                    f"max_priority={self.max_priority} is for classic request queues "
                    "(x-max-priority): quorum queues order priorities without it on RabbitMQ "
                    "4.x and refuse the argument"
                )
            if not 1 <= self.max_priority <= HIGHEST_PRIORITY:
                raise ConfigurationError(
                    f"max_priority must be between 1 and {HIGHEST_PRIORITY}, "
                    f"not {self.max_priority}"
                )

    @property
    def prefix(self) -> str:
        return f"atasks.{self.namespace}."

    def request_queue(self, atask_name: str) -> str:
        return self.prefix + atask_name

    def reply_queue(self, client: str) -> str:
        return f"atasks-replies.{self.namespace}.{client}"

    @property
    def suspects_queue(self) -> str:
        return f"atasks-suspects.{self.namespace}"

    @property
    def control_exchange(self) -> str:
        return self.prefix + "control"

    @property
    def broadcast_exchange(self) -> str:
        return self.prefix + "broadcast"

    @property
    def events_exchange(self) -> str:
        return self.prefix + "events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"atasks-dead.{self.namespace}"

    @property
    def dead_letter_queue(self) -> str:
        return f"atasks-dead.{self.namespace}"

    @property
    def dead_letter_notify_queue(self) -> str:
        return f"atasks-dead.{self.namespace}.notify"

    @property
    def lease_exchange(self) -> str:
        return f"atasks-leases.{self.namespace}"

    @property
    def lease_queue(self) -> str:
        return f"atasks-leases.{self.namespace}"

    @property
    def schedules_queue(self) -> str:
        return f"atasks-schedules.{self.namespace}"

    async def declare_schedules(self, channel: AbstractChannel) -> aio_pika.abc.AbstractQueue:
        return await _declare(
            channel,
            self.schedules_queue,
            durable=True,
            arguments={"x-queue-type": "quorum", "x-single-active-consumer": True},
        )

    def request_queue_arguments(self) -> dict[str, Any]:
        """Quorum: the broker counts deliveries and dead-letters a request delivered
        ``delivery_limit`` times without an ack (at least once: nothing is lost on the way).
        Classic: declared as atasks 0.2 did, so its queues keep working, or with
        ``x-max-priority`` when ``max_priority`` is set; atasks counts server deaths in a header
        and dead-letters at the limit itself."""
        if self.queue_type == "classic":
            return {} if self.max_priority is None else {"x-max-priority": self.max_priority}
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit - 1,  # counts returns, not deliveries
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",  # at-least-once dead-lettering needs it
        }

    async def declare_request_queue(self, channel: AbstractChannel, atask_name: str) -> None:
        name = self.request_queue(atask_name)
        await _declare(channel, name, durable=True, arguments=self.request_queue_arguments())

    async def declare_suspects(self, channel: AbstractChannel) -> None:
        await _declare(
            channel, self.suspects_queue, durable=True, arguments=self.request_queue_arguments()
        )

    async def declare_dead_letters(self, channel: AbstractChannel) -> None:
        exchange = await channel.declare_exchange(
            self.dead_letter_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        kept = await _declare(
            channel,
            self.dead_letter_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": int(self.dead_letter_ttl * 1000),
            },
        )
        notify = await _declare(
            channel,
            self.dead_letter_notify_queue,
            durable=True,
            arguments={"x-queue-type": "quorum"},
        )
        await kept.bind(exchange)
        await notify.bind(exchange)

    async def declare_leases(self, channel: AbstractChannel) -> None:
        """Leases of long calls wait here, unconsumed, and expire back to their request queue
        (dead-lettered through the default exchange under their own routing key)."""
        exchange = await channel.declare_exchange(
            self.lease_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        queue = await _declare(
            channel,
            self.lease_queue,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-dead-letter-exchange": "",
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        await queue.bind(exchange)


async def declare_all(
    connection: AbstractConnection,
    topology: Topology,
    atask_names: list[str],
    *,
    reply_queue: str | None = None,
    reply_queue_expires: float = 0.0,
) -> None:
    """Declare the namespace's exchanges, its dead letters and the request queues of
    ``atask_names`` (and, with any, the suspects queue), on a channel of their own: a queue
    that exists with other arguments closes only that channel."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        await channel.declare_exchange(
            topology.control_exchange, aio_pika.ExchangeType.FANOUT, durable=True
        )
        await channel.declare_exchange(
            topology.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        await channel.declare_exchange(
            topology.broadcast_exchange, aio_pika.ExchangeType.DIRECT, durable=True
        )
        await topology.declare_dead_letters(channel)
        await topology.declare_leases(channel)
        if reply_queue is not None:
            # Replicated and persistent, so replies outlive a broker restart or the loss of a
            # node; gone once unused for longer than a caller waits for its connection.
            expires = int((reply_queue_expires + REPLY_QUEUE_GRACE) * 1000)
            await _declare(
                channel,
                reply_queue,
                durable=True,
                arguments={"x-queue-type": "quorum", "x-expires": expires},
            )
        for name in atask_names:
            await topology.declare_request_queue(channel, name)
        if atask_names:
            await topology.declare_suspects(channel)
    finally:
        if not channel.is_closed:
            await channel.close()


async def _declare(
    channel: AbstractChannel, name: str, *, durable: bool, arguments: dict[str, Any]
) -> aio_pika.abc.AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=durable, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise ConfigurationError(
            f"queue {name!r} already exists with other arguments ({_reason(exc)}); "
            f"it was declared by an earlier atasks version or with another queue_type or "
            f"max_priority. Let it drain, then delete it (rabbitmqctl delete_queue {name}) and "
            "start the servers again; or keep it with AMQPTransport(queue_type=..., "
            "max_priority=...) matching it"
        ) from None


def _reason(exc: BaseException) -> str:
    text = str(exc.args[0]) if exc.args else str(exc)
    return text.removeprefix("PRECONDITION_FAILED - ")
