"""The server: its parts put together, and what the transport asks of it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from atasks.events import Event
from atasks.transport.backends.amqp.connection import Channels, Link
from atasks.transport.backends.amqp.lease import Ask, Leases
from atasks.transport.backends.amqp.server.batches import Batches
from atasks.transport.backends.amqp.server.broadcasts import Broadcasts
from atasks.transport.backends.amqp.server.consumers import Consumers
from atasks.transport.backends.amqp.server.control import Control
from atasks.transport.backends.amqp.server.events import Events
from atasks.transport.backends.amqp.server.lone import LoneRequests
from atasks.transport.backends.amqp.server.settlement import Settlement
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.backends.amqp.server.suspects import Suspects
from atasks.transport.backends.amqp.streams import Frames
from atasks.transport.backends.amqp.topology import Topology, declare_all
from atasks.transport.contract import Capacity, RequestHandler


class Server:
    """Serves the atasks registered with ``register`` through ``link``."""

    def __init__(
        self,
        link: Link,
        topology: Topology,
        *,
        statistics: Callable[[], Mapping[str, Any] | None],
        consumer_timeout: float,
        ask: Ask,
        events: bool = False,
    ) -> None:
        self.link = link
        self.topology = topology
        self._events = Events(link, topology)
        # With events, a "dead" event for each request it dead-letters.
        settlement = Settlement(link, topology, self._events.publish if events else None)
        self._leases = Leases(link, topology, consumer_timeout, ask)
        self._shared = shared = Shared(link, topology, settlement, self._leases, Frames(link))
        suspects = Suspects(shared)
        self._control = Control(shared, statistics)
        self._consumers = Consumers(
            shared,
            lone=LoneRequests(shared, suspects).serve,
            batch=Batches(shared, suspects).serve,
            on_broadcast=Broadcasts(shared).on_broadcast,
            on_control=self._control.on_control,
        )
        link.on_open.append(self._on_open)
        link.on_lost.append(self._consumers.lost)

    @property
    def handlers(self) -> dict[str, RequestHandler]:
        return self._shared.handlers

    async def _on_open(self, channels: Channels) -> None:
        if self._shared.kept:
            self._events.spawn(self._shared.kept.send())  # once the connection counts as ready
        if self._shared.handlers:
            await self._consumers.opened(channels)

    async def register(self, name: str, handler: RequestHandler) -> None:
        channels = await self.link.ready()
        await declare_all(channels.connection, self.topology, [name])
        if self._consumers.control is None:
            await self._consumers.consume_control(channels)
        self._shared.handlers[name] = handler
        self._shared.registering()
        await self._consumers.registered(channels, name)

    async def unregister(self, name: str) -> None:
        self._shared.handlers.pop(name, None)
        await self._consumers.unregistered(name)

    def set_capacity(self, capacity: Capacity) -> None:
        self._consumers.set_capacity(capacity)

    def rebalance(self) -> None:
        self._consumers.rebalance()

    async def drain(self, grace: float) -> None:
        self._leases.stop()  # what is leased, the lease queue keeps
        running = self._shared.running
        if running and grace > 0:
            await asyncio.wait(set(running.values()), timeout=grace)
        for task in list(running.values()):
            task.cancel()
        if running:
            await asyncio.wait(set(running.values()))

    def publish_event(self, event: Event) -> None:
        self._events.publish(event)

    async def flush_events(self) -> None:
        await self._events.flush()
