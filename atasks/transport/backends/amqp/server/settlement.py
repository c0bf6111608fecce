"""Settling request messages with the broker: replies (coalesced per caller) then acks, copies
handed back to a queue, dead letters; and holding a copy back until its original is acked."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import aiormq
from pamqp.commands import Basic

from atasks.events import Event
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.coalesce import Coalescer
from atasks.transport.backends.amqp.connection import Link, describe
from atasks.transport.backends.amqp.onewrite import publish_and_ack
from atasks.transport.backends.amqp.resume import is_direct
from atasks.transport.backends.amqp.server.confirms import Confirms
from atasks.transport.backends.amqp.server.message import Message, only, part
from atasks.transport.backends.amqp.server.resuming import Resuming
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.amqp")

REPLY_BATCH = 256  # replies in one message, at most


class Settlement:
    """How this server settles what it was delivered; ``on_dead`` hears of each dead letter."""

    def __init__(
        self, link: Link, topology: Topology, on_dead: Callable[[Event], None] | None = None
    ) -> None:
        self.link = link
        self.topology = topology
        self.on_dead = on_dead
        # Copies of calls that wait, should they reach this server, for their original's ack.
        self.requeueing: dict[str, asyncio.Event] = {}
        self.resuming = Resuming()
        self.replies: Coalescer[tuple[aiormq.abc.AbstractChannel, str], Reply] = Coalescer(
            self._publish_replies,
            count=REPLY_BATCH,
            size=min(wire.BATCH_BYTES, link.max_message_size),
            measure=wire.entry_size,
        )

    def reply_soon(self, message: Message, reply: Reply, confirms: Confirms, kept: Reply) -> None:
        """Send ``reply`` to the caller of ``message`` (with the others ready for it) and return
        at once: ``confirms`` hears how its publish ends; ``kept`` is what is kept should the
        publish fail (the reply before it was fitted to the size limit)."""
        assert message.reply_to is not None
        reply_to, direct = self.resuming.sending(message.reply_to, reply)
        sent = confirms.sending(message.reply_to, kept, keep=not direct)
        self.replies.add((_replying(message, direct), reply_to), reply, sent, quiet=False)

    async def resume(
        self,
        channel: aiormq.abc.AbstractChannel,
        call_ids: list[str],
        reply_to: str,
        kept: Callable[[str], Reply | None],
    ) -> None:
        """Resume ``call_ids`` at the caller's new address ``reply_to`` (``resuming.py``)."""
        again = self.resuming.resume(call_ids, reply_to, kept)
        for i in range(0, len(again), REPLY_BATCH):
            await self._publish_replies((channel, reply_to), again[i : i + REPLY_BATCH])

    async def reply_and_ack(self, message: Message, reply: Reply) -> None:
        """Send ``reply`` to the caller of lone request ``message``, then ack ``message``."""
        assert message.reply_to is not None
        reply_to, direct = self.resuming.sending(message.reply_to, reply)
        if direct:
            await self._reply_direct_and_ack(message, reply_to, reply)
            return
        try:  # to a durable queue: with the others ready for it, confirmed before the ack
            await self.replies.put((message.confirming, reply_to), reply)
        except aiormq.exceptions.DeliveryError as exc:
            # The broker refused the reply: run the request again rather than leave its caller
            # waiting (it counts towards the delivery limit).
            log.warning(
                "the broker refused the reply to %s (%s): requeued", reply.call_id, describe(exc)
            )
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _reply_direct_and_ack(self, message: Message, reply_to: str, reply: Reply) -> None:
        """A direct reply to a lone request goes at once (nothing else is coming for it to
        travel with), unconfirmed, on the channel the request came on, and the request's ack
        right behind it, in the same write (``onewrite.py``). The ack is claimed first, so
        that nothing else acks the request while the write waits its turn."""
        tags = () if message.settled else (message.tag,)
        message.settled = True
        try:
            await publish_and_ack(
                message.channel,
                reply.body,
                routing_key=reply_to,
                properties=wire.reply_properties(reply, announce=True),
                tags=tags,
            )
        except BaseException:
            if tags:
                message.settled = False
            raise

    async def _publish_replies(
        self, destination: tuple[aiormq.abc.AbstractChannel, str], replies: list[Reply]
    ) -> None:
        channel, reply_to = destination
        if len(replies) == 1:
            body, properties = replies[0].body, wire.reply_properties(replies[0], announce=True)
        else:
            body, properties = wire.pack_replies(replies), wire.replies_properties(announce=True)
            if len(body) > self.link.max_message_size:  # too much together: one each
                for reply in replies:
                    await self._publish_replies(destination, [reply])
                return
        # A direct reply waits for nothing: the ack after it goes behind it on its channel.
        publish = cast(aiormq.Channel, channel).basic_publish  # the abstract one lacks wait
        await publish(
            body, routing_key=reply_to, properties=properties, wait=not is_direct(reply_to)
        )

    async def dead_letter(
        self,
        name: str,
        message: Message,
        reason: str,
        error_type: str,
        error_message: str,
        requests: list[Request] | None = None,
    ) -> None:
        """Publish ``message`` to the dead letters with why and its last error (confirmed), then
        ack it: at least once, on either queue type. With ``requests`` (some calls of a batch),
        only those, in a batch of their own, and ``message`` is left for its other calls."""
        body, properties = part(message, requests)
        headers = wire.dead_letter_headers(
            properties.headers or {}, reason, error_type, error_message
        )
        if self.on_dead is not None:
            parent = message.headers.get(wire.H_PARENT)
            self.on_dead(
                Event(
                    kind="dead",
                    atask=name,
                    call_id=properties.correlation_id or "",
                    parent_id=parent if isinstance(parent, str) else None,
                    namespace=self.topology.namespace,
                    error=f"{reason}: {error_type}: {error_message}",
                )
            )
        await message.confirming.basic_publish(
            body,
            exchange=self.topology.dead_letter_exchange,
            routing_key=self.topology.request_queue(name) if name else self.topology.suspects_queue,
            properties=Basic.Properties(
                headers=headers,
                content_type=properties.content_type,
                delivery_mode=wire.PERSISTENT,
                correlation_id=properties.correlation_id,
                reply_to=properties.reply_to,
                priority=properties.priority,
                message_type=properties.message_type,
            ),
        )
        if requests is None:
            await message.ack()

    async def requeue(
        self,
        name: str,
        message: Message,
        headers: Mapping[str, Any],
        queue: str | None = None,
    ) -> None:
        """Queue a fresh copy of ``message`` (confirmed) in its atask's queue or in ``queue``,
        then ack the original: handing a request back this way does not count as a delivery
        that failed.

        Until the broker has processed the ack, a copy reaching this server waits: run at once, a
        request that kills its server would take the unacked original down too, doubling it. An
        ack merely written is not enough: a process killed with unread data on its socket resets
        the connection, and what it sent last may never be read.
        """
        call_id = message.correlation_id or ""
        self.requeueing[call_id] = done = asyncio.Event()
        try:
            await self.publish_copy(name, message, headers, queue=queue)
            await message.ack()
            # A round trip on the same channel: the broker answers it after the ack.
            await message.channel.exchange_declare("amq.direct", passive=True)
        finally:
            self.release({call_id: done})

    async def publish_copy(
        self,
        name: str,
        message: Message,
        headers: Mapping[str, Any],
        requests: list[Request] | None = None,
        *,
        queue: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Queue a fresh copy of ``message`` with ``headers`` (confirmed) in its atask's queue or
        in ``queue``; with ``requests``, a batch of just those calls of it (``batch_id``)."""
        body, properties = part(message, requests, batch_id)
        expires = (
            properties.expiration
            if requests is not None
            else wire.expiration(wire.deadline_from(headers))
        )
        kept = {k: v for k, v in headers.items() if not k.startswith("x-")}
        if requests is not None:  # a batch of its own: only what says how often it died
            kept = {**(properties.headers or {}), **only(kept, wire.H_DELIVERIES)}
        copy = Basic.Properties(
            headers=kept or None,
            content_type=properties.content_type,
            delivery_mode=message.properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=expires,
            priority=properties.priority,  # back among the requests of its priority
            message_type=properties.message_type,
        )
        await message.confirming.basic_publish(
            body, routing_key=queue or self.topology.request_queue(name), properties=copy
        )

    async def overtaken(self, call_id: str) -> None:
        """Wait, should a copy of ``call_id`` have overtaken the ack of its original."""
        requeueing = self.requeueing.get(call_id)
        if requeueing is not None:
            await requeueing.wait()

    async def holding(
        self, keys: list[str], publishing: Awaitable[object]
    ) -> dict[str, asyncio.Event]:
        """Await ``publishing`` (copies of a message being settled); until the events returned
        are set (see ``release``), a copy of ``keys`` reaching this server waits, as with
        ``requeue``. Released at once should publishing fail."""
        held = {key: asyncio.Event() for key in keys}
        self.requeueing.update(held)
        try:
            await publishing
        except BaseException:
            self.release(held)
            raise
        return held

    def release(self, held: Mapping[str, asyncio.Event]) -> None:
        """Let copies of these calls run: their original is acked, or will never be."""
        for call_id, done in held.items():
            done.set()
            if self.requeueing.get(call_id) is done:
                del self.requeueing[call_id]


def _replying(message: Message, direct: bool) -> aiormq.abc.AbstractChannel:
    """The channel of a reply to ``message``'s caller. A direct reply goes unconfirmed on the
    channel ``message`` came on, and its ack after it: the broker takes a channel's frames in
    order, so an ack it has taken means the reply was routed to the caller's channel (a
    confirm promises no more for a direct address, and would cost every call a round trip);
    should that reply not reach the caller, the server keeps it for a resume. A reply to a
    durable queue is confirmed before the ack."""
    return message.channel if direct else message.confirming
