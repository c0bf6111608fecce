"""The server: its parts put together, and what the transport asks of it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from atasks.errors import NotConnected, TransportError
from atasks.events import Event
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Channels, Link, describe
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

log = logging.getLogger("atasks.amqp")


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
        self._registering: dict[str, asyncio.Future[None]] = {}  # attempts, by atask name
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
        """Declare the queue of atask ``name`` and consume it. A connection lost meanwhile is
        waited for (``Link.renewed``) and the registration made again on the next one, within
        ``reconnect_wait`` of the first loss. Each attempt is finished even if the caller is
        cancelled, never left half made: ``unregister`` waits for it."""
        channels = await self.link.ready()
        give_up: float | None = None
        while True:
            attempt = asyncio.ensure_future(self._register(channels, name, handler))
            self._registering[name] = attempt
            attempt.add_done_callback(partial(self._registered, name))
            try:
                await asyncio.shield(attempt)
                return
            except CONNECTION_ERRORS as exc:
                if not self.link.lost(channels):
                    raise  # e.g. the queue exists with other arguments: not ours to mend
                now = asyncio.get_running_loop().time()
                give_up = now + self.link.reconnect_wait if give_up is None else give_up
                log.warning(
                    "lost the connection while registering atask %r (%s); registering it "
                    "again once reconnected",
                    name,
                    describe(exc),
                )
            try:
                async with asyncio.timeout_at(give_up):
                    channels = await self.link.renewed(channels)
            except NotConnected:
                raise  # closed meanwhile: the server stops
            except (TimeoutError, TransportError) as exc:
                raise TransportError(
                    f"cannot serve atask {name!r}: no working connection to the broker at "
                    f"{self.link.safe_url} for {self.link.reconnect_wait:g}s"
                ) from exc

    async def _register(self, channels: Channels, name: str, handler: RequestHandler) -> None:
        log.debug("registering atask %r", name)
        await declare_all(channels.connection, self.topology, [name])
        if self._consumers.control is None:
            await self._consumers.consume_control(channels)
        self._shared.handlers[name] = handler
        self._shared.registering()
        await self._consumers.registered(channels, name)

    def _registered(self, name: str, attempt: asyncio.Future[None]) -> None:
        if self._registering.get(name) is attempt:
            del self._registering[name]
        if not attempt.cancelled():
            attempt.exception()  # retrieved: its caller, if not cancelled, has it too

    async def unregister(self, name: str) -> None:
        attempt = self._registering.get(name)
        if attempt is not None:  # its caller was cancelled: finish it, then undo it
            await asyncio.wait({attempt})
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
