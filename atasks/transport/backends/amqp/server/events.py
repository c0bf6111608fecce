"""Lifecycle events a server publishes, batched: one message per ``EVENTS_FLUSH`` seconds."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from pamqp.commands import Basic

from atasks.events import Event, encode_batch
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.topology import Topology

log = logging.getLogger("atasks.amqp")

EVENTS_FLUSH = 0.05  # seconds between two messages of batched events


class Events:
    """Publishes a server's events; also runs its other background tasks (``spawn``)."""

    def __init__(self, link: Link, topology: Topology) -> None:
        self.link = link
        self.topology = topology
        self._batch: list[Event] = []
        self._flush: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()

    def publish(self, event: Event) -> None:
        # Batched: one message per EVENTS_FLUSH seconds, not one per event, so that events cost
        # servers and broker a fraction of what the calls themselves cost.
        self._batch.append(event)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(EVENTS_FLUSH, self._spawn_flush)

    def _spawn_flush(self) -> None:
        self.spawn(self.flush())

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self._flush = None
        batch, self._batch = self._batch, []
        channels = self.link.channels
        if not batch or channels is None or channels.events_raw is None:
            return
        try:
            await channels.events_raw.basic_publish(
                encode_batch(batch),
                exchange=self.topology.events_exchange,
                routing_key="events",
                properties=Basic.Properties(content_type="application/json"),
            )
        except CONNECTION_ERRORS as exc:
            log.debug("dropped %d events: %s", len(batch), describe(exc))
