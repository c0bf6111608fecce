"""The scheduler role over RabbitMQ: the active consumer of a single-active-consumer queue.

Every serving transport of a namespace with schedules consumes ``atasks-schedules.<ns>``, a
durable quorum queue with ``x-single-active-consumer``: the broker delivers to one consumer
only, and that one holds the role. The queue holds one *state* message, which the holder keeps
unacked while it holds the role. If the holder dies, its connection closes, the state returns to
the queue and the broker makes another consumer active: that one gets the state, and the role.

Firings are ordinary call requests whose ``reply_to`` is this same queue, so their outcomes come
to whoever holds the role. A commit is one AMQP transaction on the holder's channel: publish the
firings, dead-letter those that failed, publish the new state, ack the old state and the outcomes
received — all applied by the broker at ``tx.commit``, or none of it if the holder dies first.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage

from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.messages import Request, dead_reason
from atasks.transport.seat import Failed, SchedulerSeat, SeatLost

STATE = "atasks-schedule-state"  # the message type of the state
PREFETCH = 256  # the state plus outcomes received between two commits


class AMQPSeat(SchedulerSeat):
    """One contender for the scheduler role of ``topology``'s namespace."""

    def __init__(self, link: Link, topology: Topology) -> None:
        self.link = link
        self.queue = topology.schedules_queue
        self.topology = topology
        self._channel: AbstractChannel | None = None
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._lost = asyncio.Event()
        self._held: list[int] = []  # delivery tags to ack at the next commit
        self._committed: str | None = None  # the message id of the state last committed
        self._first: asyncio.Future[bytes] | None = None
        link.on_lost.append(self._on_link_lost)

    def _on_link_lost(self) -> None:
        self._lost.set()

    async def take(self) -> bytes | None:
        await self._close_channel()
        self._lost = asyncio.Event()
        self._held, self._committed = [], None
        self._first = asyncio.get_running_loop().create_future()
        channels = await self.link.ready()
        channel = self._channel = await channels.connection.channel(publisher_confirms=False)
        lost = self._lost  # this channel's: a closing older one must not end the new tenure
        channel.close_callbacks.add(lambda *_: lost.set())
        self._raw = await channel.get_underlay_channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await self.topology.declare_schedules(channel)
        await self._raw.tx_select()
        found = queue.declaration_result
        if found.message_count == 0 and found.consumer_count == 0:
            # Nobody holds or waits for a state: make the first one (two servers starting at
            # once may both do it; the holder merges the second into its own).
            await self._publish_state(b"")
            await self._raw.tx_commit()
        await queue.consume(self._on_message)
        waiting_lost = asyncio.ensure_future(self._until_lost())
        try:
            await asyncio.wait({self._first, waiting_lost}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting_lost.cancel()
        if not self._first.done():
            raise SeatLost("the connection closed while waiting for the scheduler role")
        return self._first.result() or None

    async def _until_lost(self) -> bytes:
        await self._lost.wait()
        return b""

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        if message.delivery_tag is None:
            return
        self._held.append(message.delivery_tag)
        if message.type == STATE:
            if self._first is not None and not self._first.done():
                self._first.set_result(message.body)
            elif message.message_id != self._committed and self.on_state is not None:
                self.on_state(message.body)
        elif message.type in (wire.OK, wire.ERROR) and self.on_outcome is not None:
            properties = aiormq.spec.Basic.Properties(
                correlation_id=message.correlation_id,
                content_type=message.content_type,
                message_type=message.type,
                headers=dict(message.headers or {}),
            )
            self.on_outcome(wire.reply_from(properties, message.body))

    async def commit(
        self, firings: list[Request], state: bytes, failed: Sequence[Failed] = ()
    ) -> None:
        raw = self._raw
        if raw is None or self._lost.is_set():
            raise SeatLost("this server does not hold the scheduler role")
        held, self._held = self._held, []
        try:
            for request in firings:
                await raw.basic_publish(
                    request.body,
                    routing_key=self.topology.request_queue(request.name),
                    properties=wire.request_properties(request, self.queue, persistent=True),
                )
            for request, reply in failed:  # as a server dead-letters a fire-and-forget call
                properties = wire.request_properties(request, self.queue, persistent=True)
                properties.headers = wire.dead_letter_headers(
                    properties.headers or {},
                    dead_reason(reply),
                    reply.error_type,
                    reply.error_message,
                )
                properties.expiration = None
                await raw.basic_publish(
                    request.body,
                    exchange=self.topology.dead_letter_exchange,
                    routing_key=self.topology.request_queue(request.name),
                    properties=properties,
                )
            # Known as ours before the commit: the broker may deliver it back before commit-ok.
            self._committed = await self._publish_state(state)
            for tag in held:
                await raw.basic_ack(tag)
            await raw.tx_commit()
        except CONNECTION_ERRORS as exc:
            self._lost.set()
            raise SeatLost(f"lost the scheduler role while committing: {describe(exc)}") from exc

    async def _publish_state(self, state: bytes) -> str:
        assert self._raw is not None
        message_id = uuid.uuid4().hex
        await self._raw.basic_publish(
            state,
            routing_key=self.queue,
            properties=aiormq.spec.Basic.Properties(
                message_type=STATE,
                message_id=message_id,
                content_type="application/json",
                delivery_mode=wire.PERSISTENT,
            ),
        )
        return message_id

    async def wait_lost(self) -> None:
        await self._lost.wait()

    async def release(self) -> None:
        await self._close_channel()  # the broker hands the state to another consumer
        self._lost.set()

    async def close(self) -> None:
        with contextlib.suppress(ValueError):
            self.link.on_lost.remove(self._on_link_lost)
        await self._close_channel()
        self._lost.set()

    async def _close_channel(self) -> None:
        channel, self._channel, self._raw = self._channel, None, None
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
                await channel.close()
