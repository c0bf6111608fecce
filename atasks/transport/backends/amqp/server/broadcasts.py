"""Broadcasts: each server's own copy of a request, from an exclusive queue of its own (gone
with its connection, so a server that is down misses them)."""

from __future__ import annotations

import asyncio
import contextvars
import logging
from functools import partial

from aiormq.abc import DeliveredMessage

from atasks.transport import serving
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS
from atasks.transport.backends.amqp.server.delivery import CopyDelivery
from atasks.transport.backends.amqp.server.message import Message
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.backends.amqp.server.unreadable import refuse
from atasks.transport.backends.amqp.versions import unreadable
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")


class Broadcasts:
    """Serves this server's copies of broadcasts."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    async def on_broadcast(self, delivered: DeliveredMessage) -> None:
        message = Message(delivered, delivered.channel)
        name = str(getattr(delivered.delivery, "routing_key", "") or "")
        key = f"broadcast:{id(message)}"  # not its call id: a cancellation is not for copies
        task = asyncio.get_running_loop().create_task(
            self._serve(name, message), context=contextvars.Context()
        )
        running, held = self.shared.running, self.shared.held
        running[key] = task
        held[id(message)] = message

        def forget(done: asyncio.Task[None]) -> None:
            del held[id(message)]
            if running.get(key) is done:
                del running[key]

        task.add_done_callback(forget)

    async def _serve(self, name: str, message: Message) -> None:
        """This server's copy of a broadcast: run it (waiting for a slot in the router, never
        handed to another server), then ack; a failed one is dead-lettered."""
        try:
            await serving.serve(
                CopyDelivery(self.shared, name, message), partial(self._take, name, message)
            )
        except CONNECTION_ERRORS as exc:
            log.warning("broadcast %s of %r not finished: %s", message.correlation_id, name, exc)

    async def _take(self, name: str, message: Message) -> serving.Taken:
        handler = self.shared.handlers.get(name)
        if handler is None:  # unbound meanwhile
            await message.ack()
            return None
        if not message.correlation_id:
            await self.shared.settlement.dead_letter(
                name,
                message,
                "rejected",
                "atasks.errors.DecodeError",
                "the broadcast has no correlation_id (its call id)",
            )
            return None
        reason = unreadable(message.properties.message_type, message.headers)
        if reason is not None:  # a newer wire: refused with why, as a request from a queue is
            await refuse(self.shared, name, reason, message)
            return None
        request = self.shared.request_from(name, message)
        if isinstance(request, Reply):
            return request
        return partial(serving.run, name, request, handler)
