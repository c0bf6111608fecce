"""Dead letters of a namespace: the requests kept in the quorum queue ``atasks-dead.<ns>`` after
the broker (or atasks, for classic queues) gave up on them. What ``atasks dead list``,
``replay`` and ``purge`` do.

Reading takes each dead letter with ``basic.get``, unacknowledged, and hands back those it keeps
with one ``basic.nack(requeue=True)``. RabbitMQ 4.3 counts neither as a delivery, where a
``basic.reject`` or a closed channel would count one each, and a quorum queue drops a message
past its delivery limit (20 by default on 4.x): so listing, however often, loses nothing. On
RabbitMQ 4.0 to 4.2 every return counts (docs: guides/dead-letters.md).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pamqp.commands import Basic

from atasks.calls import priority_from
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.server import died_running
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.backends.amqp.transport import parse_urls

DROPPED_ON_REPLAY = (
    wire.H_DEAD_REASON,
    wire.H_DEAD_AT,
    wire.H_ERROR_TYPE,
    wire.H_ERROR_MESSAGE,
    wire.H_DELIVERIES,  # the deaths it counted start again
    wire.H_SUSPECT_OF,
    wire.H_UNISOLATED,
    wire.H_DEADLINE,  # long past: its server would refuse the call at once
    wire.H_LEASE_HOLDER,
    wire.H_LEASE_CALL,
)
"""Headers a replayed request goes without, besides the broker's own (``x-``)."""


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead request, as ``atasks dead list`` shows it."""

    atask: str
    reason: str  # delivery_limit, rejected, expired…
    call_id: str
    queue: str  # the request queue it died in
    died_at: float | None  # time.time() seconds; None where the broker did not record it
    size: int  # bytes of its payload
    content_type: str
    reply_to: str | None
    error: str = ""  # its last error, "module.Type: message"

    def age(self, now: float | None = None) -> float | None:
        """Seconds since it died, if known."""
        if self.died_at is None:
            return None
        return max((time.time() if now is None else now) - self.died_at, 0.0)

    def as_dict(self, now: float | None = None) -> dict[str, Any]:
        fields = {name: getattr(self, name) for name in self.__dataclass_fields__}
        return {**fields, "age": self.age(now)}


@dataclass(frozen=True, slots=True)
class Replayed:
    """What ``replay_dead_letters`` did: the dead letters sent back to their request queues, and
    those left in place with the reason why."""

    sent: list[DeadLetter]
    left: list[tuple[DeadLetter, str]]


async def list_dead_letters(
    url: str, namespace: str, *, limit: int | None = None
) -> list[DeadLetter]:
    """The dead letters of ``namespace``, oldest first (at most ``limit``), all left in place."""
    topology = Topology(namespace)
    async with _dead_letters(url, topology) as (_, queue):
        if queue is None:
            return []
        letters: list[DeadLetter] = []
        last: AbstractIncomingMessage | None = None
        try:
            while limit is None or len(letters) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                last = message
                letters.append(read(message, topology))
        finally:
            if last is not None:  # every one taken goes back, uncounted
                await last.nack(requeue=True, multiple=True)
        return letters


async def replay_dead_letters(
    url: str,
    namespace: str,
    *,
    atask: str | None = None,
    call_id: str | None = None,
    limit: int | None = None,
) -> Replayed:
    """Send dead letters (of ``atask`` only, or the call ``call_id`` only, if given; at most
    ``limit``) back to the request
    queues they died in, each as a fresh request: a new copy is published (confirmed, and
    refused when no server ever declared that queue), then the dead letter is acked.

    A replayed request keeps its call id, arguments, priority and ``reply_to``, and loses the
    broker's death records, its delivery count and its deadline (long past, most likely): it
    runs with none. A caller still waiting gets its result; otherwise the reply is dropped.
    """
    topology = Topology(namespace)
    sent: list[DeadLetter] = []
    left: list[tuple[DeadLetter, str]] = []
    async with _dead_letters(url, topology) as (channel, queue):
        if queue is None:
            return Replayed(sent, left)
        last: AbstractIncomingMessage | None = None
        try:
            while limit is None or len(sent) < limit:
                message = await queue.get(no_ack=False, fail=False)
                if message is None:
                    break
                letter = read(message, topology)
                if (atask is not None and letter.atask != atask) or (
                    call_id is not None and letter.call_id != call_id
                ):
                    last = message
                    continue
                try:
                    await channel.default_exchange.publish(
                        fresh_copy(message), routing_key=letter.queue, mandatory=True
                    )
                except aiormq.exceptions.DeliveryError:
                    left.append((letter, f"no queue {letter.queue!r}: no server declared it"))
                    last = message
                    continue
                await message.ack()
                sent.append(letter)
        finally:
            if last is not None:
                await last.nack(requeue=True, multiple=True)
    return Replayed(sent, left)


async def purge_dead_letters(url: str, namespace: str) -> int:
    """Delete every dead letter of ``namespace``; how many there were."""
    async with _dead_letters(url, Topology(namespace)) as (_, queue):
        if queue is None:
            return 0
        purged = await queue.purge()
        return purged.message_count or 0


def read(message: AbstractIncomingMessage, topology: Topology) -> DeadLetter:
    """What a dead letter says of itself. Quorum request queues record the death (``x-death``,
    ``x-first-death-*``); atasks records it for classic ones (a header, no time)."""
    headers = message.headers or {}
    queue = str(headers.get(wire.FIRST_DEATH_QUEUE) or message.routing_key or "")
    atask = queue.removeprefix(topology.prefix)
    return DeadLetter(
        atask=atask,
        reason=wire.dead_reason(headers) or "?",
        call_id=message.correlation_id or "",
        queue=queue,
        died_at=died_at(headers),
        size=len(message.body),
        content_type=message.content_type or "",
        reply_to=message.reply_to,
        error=last_error(headers, atask),
    )


def last_error(headers: Mapping[str, Any], atask: str) -> str:
    """What a dead letter of ``atask`` records of its last error; for one the broker
    dead-lettered at its delivery limit, that its servers died running it."""
    error = wire.last_error(headers)
    if error or wire.dead_reason(headers) != "delivery_limit":
        return error
    return f"atasks.errors.DeliveryLimitExceeded: {died_running(atask, None)}"


def died_at(headers: Mapping[str, Any]) -> float | None:
    """When atasks (``atasks-dead-at``) or else the broker (``x-death`` times) last
    dead-lettered it, in ``time.time()`` seconds."""
    text = headers.get(wire.H_DEAD_AT)
    if text is not None:
        try:
            return float(str(text.decode() if isinstance(text, bytes) else text))
        except ValueError:
            pass
    deaths = headers.get("x-death")
    if not isinstance(deaths, list):
        return None
    times = [
        death["time"].timestamp()
        for death in deaths
        if isinstance(death, Mapping) and isinstance(death.get("time"), datetime)
    ]
    return max(times, default=None)


def fresh_copy(message: AbstractIncomingMessage) -> aio_pika.Message:
    """The request a dead letter was, without the records of its death."""
    headers = {
        key: value
        for key, value in (message.headers or {}).items()
        if not key.startswith("x-") and key not in DROPPED_ON_REPLAY
    }
    return aio_pika.Message(
        _without_deadlines(message) if message.type == wire.BATCH else message.body,
        headers=headers or None,
        content_type=message.content_type,
        type=message.type,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        # From the header, as published: aio_pika reads a missing priority property as 0.
        priority=wire.broker_priority(priority_from(headers.get(wire.H_PRIORITY))),
    )


def _without_deadlines(message: AbstractIncomingMessage) -> bytes:
    """The body of a dead batch of calls, each without its deadline (as a lone request loses
    its own); a batch that cannot be read goes back as it is, to be dead-lettered again."""
    try:
        requests = wire.batch_from("", Basic.Properties(), message.body)
    except ValueError:
        return message.body
    for request in requests:
        request.deadline = None
    return wire.pack_requests(requests)


@asynccontextmanager
async def _dead_letters(
    url: str, topology: Topology
) -> AsyncIterator[tuple[AbstractChannel, AbstractQueue | None]]:
    """A channel with publisher confirms, and the dead-letter queue (``None`` if no server of
    the namespace ever declared it)."""
    connection = await aio_pika.connect(parse_urls(url)[0])
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        try:
            queue: AbstractQueue | None = await channel.declare_queue(
                topology.dead_letter_queue, passive=True
            )
        except aio_pika.exceptions.ChannelNotFoundEntity:
            queue = None
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        yield channel, queue
