"""Consumers and capacity: one consumer per request queue whose prefetch fits the free slots
(see ``intake``), the suspects queue one at a time, this server's broadcast and control queues;
rebalanced whenever the free slots change."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage

from atasks.transport.backends.amqp.connection import (
    CONNECTION_ERRORS,
    Channels,
    describe,
    is_consumer_timeout,
)
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.reader import OnMessage, consume_in_reader, nothing
from atasks.transport.backends.amqp.server.message import Message, handled
from atasks.transport.backends.amqp.server.state import SUSPECTS, Shared
from atasks.transport.backends.amqp.server.unreadable import refuse_unreadable
from atasks.transport.backends.amqp.topology import declare_all
from atasks.transport.backends.amqp.versions import unreadable
from atasks.transport.contract import Capacity

log = logging.getLogger("atasks.amqp")

UNBOUNDED_PREFETCH = 64  # served without a router's capacity (register_callback by hand)
UNREGISTER_WITHIN = 10.0  # seconds for the broker to stop a queue's consumer or unbind it

Serve = Callable[[Intake, Message], Coroutine[Any, Any, None]]


class Consumers:
    """The consumers of one server, kept in line with its capacity."""

    def __init__(
        self,
        shared: Shared,
        *,
        lone: Serve,
        batch: Serve,
        on_broadcast: OnMessage,
        on_control: OnMessage,
    ) -> None:
        self.shared = shared
        self._lone = lone
        self._batch = batch
        self._on_broadcast = on_broadcast
        self._on_control = on_control
        self.intakes: dict[str, Intake] = {}
        self._rebalancing: asyncio.Task[None] | None = None
        self._rebalance_again = False
        self._poked = False
        self.control: str | None = None  # the control consumer
        self._broadcasts: str | None = None  # this server's exclusive broadcast queue
        self._suspects: str | None = None  # the suspects consumer
        # One broadcast queue and one suspects consumer, even with registrations racing; and
        # each consumer made with its own prefetch on the shared channel.
        self._calls_consumers = asyncio.Lock()
        shared.rebalance = self.rebalance

    async def opened(self, channels: Channels) -> None:
        """Consume again on a new connection."""
        shared = self.shared
        await declare_all(channels.connection, shared.topology, list(shared.handlers))
        await self.consume_control(channels)
        async with self._calls_consumers:
            await self._consume_broadcasts(channels)
            await self._consume_suspects(channels)
        for intake in self.intakes.values():
            await self._fit(channels, intake)

    def lost(self) -> None:
        self.control = None
        self._broadcasts = None
        self._suspects = None
        self.shared.suspects.reset()
        for intake in self.intakes.values():
            intake.reset()
        link = self.shared.link
        if is_consumer_timeout(link.lost_because):
            now = time.monotonic()
            held = [now - d.received for d in self.shared.held.values() if not d.settled]
            self.shared.leases.learn_timeout(max(held, default=0.0))

    async def consume_control(self, channels: Channels) -> None:
        queue = await channels.calls.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.shared.topology.control_exchange)
        ok = await channels.calls_raw.basic_consume(queue.name, self._on_control, no_ack=True)
        self.control = ok.consumer_tag
        self.shared.frames.credit_to = queue.name  # streams' credits come here too

    async def _consume_broadcasts(self, channels: Channels) -> None:
        """An exclusive queue of this server's own, bound to the broadcast exchange under every
        atask name it serves: gone with the connection, so a server that is down misses
        broadcasts (RabbitMQ 4.3 refuses transient queues that are not exclusive)."""
        shared = self.shared
        queue = await channels.calls.declare_queue(exclusive=True, auto_delete=True)
        for name in shared.handlers:
            await queue.bind(shared.topology.broadcast_exchange, routing_key=name)
        capacity = shared.capacity
        limit = capacity.limit if capacity is not None else UNBOUNDED_PREFETCH
        # On the calls channel, whose other consumers exist already (a prefetch applies to the
        # consumers made after it): each copy waits for a slot in the router, not in the broker.
        await channels.calls_raw.basic_qos(prefetch_count=limit, global_=False)
        await channels.calls_raw.basic_consume(queue.name, self._on_broadcast)
        self._broadcasts = queue.name

    async def _consume_suspects(self, channels: Channels) -> None:
        """The suspects queue, one request at a time (see ``suspects``)."""
        await channels.calls_raw.basic_qos(prefetch_count=1, global_=False)
        ok = await consume_in_reader(
            channels.calls_raw,
            self.shared.topology.suspects_queue,
            self._on_request(self.shared.suspects, channels.calls_raw),
        )
        self._suspects = ok.consumer_tag

    async def _bind_broadcasts(self, channels: Channels, name: str, *, bind: bool) -> None:
        queue = self._broadcasts
        if queue is None:
            return
        exchange = self.shared.topology.broadcast_exchange
        if bind:
            await channels.calls_raw.queue_bind(queue, exchange, routing_key=name)
        else:
            await channels.calls_raw.queue_unbind(queue, exchange, routing_key=name)

    async def registered(self, channels: Channels, name: str) -> None:
        """Consume for atask ``name``, registered just now."""
        async with self._calls_consumers:
            if self._broadcasts is None:
                await self._consume_broadcasts(channels)
            else:
                await self._bind_broadcasts(channels, name, bind=True)
            if self._suspects is None:
                await self._consume_suspects(channels)
        self.intakes.setdefault(name, Intake(name))
        self.rebalance()
        while self._rebalancing is not None and not self._rebalancing.done():
            await asyncio.shield(self._rebalancing)

    async def unregistered(self, name: str) -> None:
        """Stop consuming for atask ``name``, unregistered just now."""
        intake = self.intakes.pop(name, None)
        channels = self.shared.link.channels
        if intake is None or channels is None:
            return
        try:
            async with asyncio.timeout(UNREGISTER_WITHIN):  # the broker may not answer
                await self._bind_broadcasts(channels, name, bind=False)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            log.debug("could not unbind broadcasts of %s: %s", name, describe(exc))
        for tag in [*intake.stale, *([intake.tag] if intake.tag else [])]:
            await cancel_consumer(channels.serve_raw, tag, name)
        if not self.shared.handlers and self._suspects is not None:
            tag, self._suspects = self._suspects, None
            await cancel_consumer(channels.calls_raw, tag, SUSPECTS)

    def set_capacity(self, capacity: Capacity) -> None:
        self.shared.capacity = capacity
        capacity.subscribe(self._poke)

    def _poke(self) -> None:
        # Slots change inside a handler, before it returns its reply and counts its delivery
        # handled: look once that has happened, and once per turn of the loop.
        if not self._poked:
            self._poked = True
            asyncio.get_running_loop().call_soon(self._poked_rebalance)

    def _poked_rebalance(self) -> None:
        self._poked = False
        self.rebalance()

    def rebalance(self) -> None:
        """Bring every queue's consumer in line with the free slots, in the background; one
        pass at a time, always converging on the latest state."""
        if self._rebalancing is not None and not self._rebalancing.done():
            self._rebalance_again = True
            return
        if not self.intakes or not self.shared.link.is_ready:
            return
        if not any(intake.stale or intake.plan(self._free()) for intake in self.intakes.values()):
            return
        self._rebalancing = asyncio.get_running_loop().create_task(self._rebalance())

    def _free(self) -> int:
        capacity = self.shared.capacity
        return capacity.free if capacity is not None else UNBOUNDED_PREFETCH

    async def _rebalance(self) -> None:
        self._rebalance_again = True
        while self._rebalance_again:
            self._rebalance_again = False
            channels = self.shared.link.channels
            if channels is None:
                return
            try:
                for intake in list(self.intakes.values()):
                    await self._fit(channels, intake)
            except CONNECTION_ERRORS as exc:  # the connection is going: reopening redoes this
                log.debug("could not adjust consumers: %s", describe(exc))
                return

    async def _fit(self, channels: Channels, intake: Intake) -> None:
        channel = channels.serve_raw
        prefetch = intake.plan(self._free())
        if prefetch is not None and intake.name in self.shared.handlers:
            # Per-consumer prefetch: applies to the consumers created after it on this channel.
            await channel.basic_qos(prefetch_count=prefetch, global_=False)
            ok = await consume_in_reader(
                channel,
                self.shared.topology.request_queue(intake.name),
                self._on_request(intake, channels.calls_raw),
            )
            assert ok.consumer_tag is not None
            intake.replaced(ok.consumer_tag, prefetch)
        while intake.stale:
            await channel.basic_cancel(intake.stale.pop())

    def _on_request(self, intake: Intake, confirming: aiormq.abc.AbstractChannel) -> OnMessage:
        def on_request(delivered: DeliveredMessage) -> Coroutine[Any, Any, None]:
            # Called in aiormq's reader (``consume_in_reader``): the call's task starts now,
            # not a turn later in a task of aiormq's, which only gets nothing to do.
            try:
                take(delivered)
            except Exception:  # never into aiormq's reader, which would close the channel
                log.exception("could not take a request from %s", intake.name)
            return nothing()

        def take(delivered: DeliveredMessage) -> None:
            # The call gets a task of its own, not aiormq's: a lost connection ends aiormq's
            # tasks, and a call should finish and keep its reply for the next connection.
            message = Message(delivered, confirming)
            if message.consumer_tag is not None:
                intake.delivered(message.consumer_tag)
                message.counted = True
            # A context of its own: nothing set where the connection was opened leaks into it.
            serve = self._batch if message.is_batch else self._lone
            reason = unreadable(message.properties.message_type, message.headers)
            if reason is not None:  # a newer wire: refused with why, never dropped
                serve = partial(refuse_unreadable, self.shared, reason)
            task = asyncio.get_running_loop().create_task(
                serve(intake, message), context=contextvars.Context()
            )
            key = message.correlation_id or f"?{id(task)}"
            running, held = self.shared.running, self.shared.held
            running[key] = task
            held[id(message)] = message

            def forget(done: asyncio.Task[None]) -> None:
                handled(intake, message)
                del held[id(message)]
                if running.get(key) is done:  # a requeued copy may have taken the key
                    del running[key]

            task.add_done_callback(forget)

        return on_request


async def cancel_consumer(channel: aiormq.abc.AbstractChannel, tag: str, queue: str) -> None:
    """Stop a consumer, as far as the broker answers within ``UNREGISTER_WITHIN``."""
    try:
        async with asyncio.timeout(UNREGISTER_WITHIN):
            await channel.basic_cancel(tag)
    except (*CONNECTION_ERRORS, TimeoutError) as exc:
        log.debug("could not cancel the consumer of %s: %s", queue, describe(exc))
