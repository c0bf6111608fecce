"""Delayed requests over RabbitMQ, without the delayed-message plugin: a ladder of TTL queues.

A request due in ``s`` whole seconds (rounded up) climbs down ``LEVELS`` rungs, one per bit of
``s``, highest first. Rung ``k`` is a topic exchange ``atasks-delay.<ns>.<k>`` and a durable
quorum queue of the same name whose messages expire after ``2**k`` seconds and are then
dead-lettered (at least once) to rung ``k - 1``'s exchange. The routing key is the bits of
``s``, one word each, then the request queue's name: at rung ``k`` a ``1`` goes to the queue (it
waits ``2**k`` seconds), a ``0`` goes straight on (an exchange-to-exchange binding). Under rung 0
the exchange ``atasks-delay.<ns>.deliver`` routes the request to its queue, bound there by
whoever sends one. Every message of one queue has the same TTL, so the oldest expires first:
quorum queues expire messages only at their head. This is how Celery 5.5 delays tasks on quorum
queues.

Each rung's queue is declared the first time a delay needs it (three seconds: rungs 0 and 1).
"""

from __future__ import annotations

import math
import time

import aiormq
from aio_pika.abc import AbstractChannel

from atasks.errors import ConfigurationError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link
from atasks.transport.backends.amqp.oneway import after_refusal
from atasks.transport.backends.amqp.topology import Topology, declare_all
from atasks.transport.messages import Request

LEVELS = 28  # delays up to 2**28 - 1 seconds, eight and a half years
DELIVER = "deliver"


def rung(namespace: str, level: int) -> str:
    """The exchange, and the queue, of rung ``level``."""
    return f"atasks-delay.{namespace}.{level}"


def deliver_exchange(namespace: str) -> str:
    return f"atasks-delay.{namespace}.{DELIVER}"


def whole_seconds(not_before: float, now: float | None = None) -> int:
    """The delay of a request due at ``not_before``, in whole seconds, rounded up (never early)."""
    seconds = math.ceil(not_before - (time.time() if now is None else now))
    if seconds >= 2**LEVELS:
        raise ConfigurationError(f"a delay of {seconds}s is over the longest, {2**LEVELS - 1}s")
    return max(seconds, 0)


def routing_key(seconds: int, queue: str) -> str:
    """The bits of ``seconds``, highest rung first, then ``queue``."""
    return ".".join([*format(seconds, f"0{LEVELS}b"), queue])


def entry(namespace: str) -> str:
    """The exchange a delayed request is published to: the highest rung's."""
    return rung(namespace, LEVELS - 1)


class Ladder:
    """Declares what delayed requests of one namespace need, each thing once per process."""

    def __init__(self, link: Link, topology: Topology, declared: set[str]) -> None:
        self.link = link
        self.topology = topology
        self.declared = declared  # the request queues declared on the current connection
        link.on_lost.append(self.forget)
        self._rungs = False
        self._queues: set[int] = set()
        self._bound: set[str] = set()

    async def publish(self, request: Request, when: float, reply_to: str | None) -> None:
        """Publish ``request`` (confirmed) to wait in the ladder until ``when``; its queue is
        declared first (as for a fire-and-forget request), so it waits there for a server. Refused:
        tried again, then ``TransportError``; not confirmed: published again (at least once)."""
        topology, declared = self.topology, self.declared
        queue = topology.request_queue(request.name)
        properties = wire.request_properties(request, reply_to, persistent=True)
        properties.expiration = None  # a message TTL would expire it in the first rung
        channels = await self.link.ready()
        refusals = 0
        while True:
            try:
                if request.name not in declared:
                    await declare_all(channels.connection, topology, [request.name])
                    declared.add(request.name)
                seconds = whole_seconds(when)
                await self.prepare(channels.calls, seconds, queue)
                await channels.calls_raw.basic_publish(
                    request.body,
                    exchange=entry(topology.namespace),
                    routing_key=routing_key(seconds, queue),
                    properties=properties,
                    mandatory=True,
                )
                return
            except aiormq.exceptions.PublishError as exc:  # unroutable: something was deleted
                self.forget()
                declared.discard(request.name)
                refusals = await after_refusal(refusals, "delayed request", exc)
            except aiormq.exceptions.DeliveryError as exc:
                refusals = await after_refusal(refusals, "delayed request", exc)
            except CONNECTION_ERRORS:
                self.forget()
                channels = await self.link.renewed(channels)

    def forget(self) -> None:
        """Declare everything again (the broker may have lost what was not durable)."""
        self._rungs = False
        self._queues.clear()
        self._bound.clear()

    async def prepare(self, channel: AbstractChannel, seconds: int, queue: str) -> None:
        """The exchanges, the rungs ``seconds`` waits in, and ``queue``'s binding, declared."""
        namespace = self.topology.namespace
        if not self._rungs:
            await channel.declare_exchange(deliver_exchange(namespace), "topic", durable=True)
            below = deliver_exchange(namespace)
            for level in range(LEVELS):
                exchange = await channel.declare_exchange(
                    rung(namespace, level), "topic", durable=True
                )
                skip = await channel.get_exchange(below, ensure=False)
                await skip.bind(exchange, routing_key=_pattern(level, "0"))
                below = rung(namespace, level)
            self._rungs = True
        for level in range(LEVELS):
            if seconds >> level & 1 and level not in self._queues:
                await self._declare_rung(channel, level)
                self._queues.add(level)
        if queue not in self._bound:
            found = await channel.get_queue(queue, ensure=False)
            await found.bind(deliver_exchange(namespace), routing_key="*." * LEVELS + queue)
            self._bound.add(queue)

    async def _declare_rung(self, channel: AbstractChannel, level: int) -> None:
        namespace = self.topology.namespace
        below = rung(namespace, level - 1) if level else deliver_exchange(namespace)
        name = rung(namespace, level)
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-message-ttl": 2**level * 1000,
                "x-dead-letter-exchange": below,
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",  # at-least-once dead-lettering needs it
            },
        )
        await queue.bind(name, routing_key=_pattern(level, "1"))


def _pattern(level: int, bit: str) -> str:
    """The binding pattern at rung ``level`` for the bit ``bit`` of a routing key."""
    return "*." * (LEVELS - 1 - level) + bit + ".#"
