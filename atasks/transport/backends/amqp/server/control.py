"""The control plane of a server: cancellations, stream credits, lease queries and inspect
requests, from its exclusive control queue."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from atasks.events import SERVER_ID
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe
from atasks.transport.backends.amqp.lease import LEASE
from atasks.transport.backends.amqp.resume import RESUME, unpack_ids
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")


class Control:
    """Answers the control messages of one server."""

    def __init__(self, shared: Shared, statistics: Callable[[], Mapping[str, Any] | None]) -> None:
        self.shared = shared
        self.statistics = statistics
        self.started = time.time()

    async def on_control(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        call_id = properties.correlation_id
        shared = self.shared
        if properties.message_type == "inspect" and properties.reply_to:
            await self._answer_inspect(properties.reply_to, call_id)
        elif properties.message_type == LEASE and properties.reply_to:
            if shared.leases.answers(properties.headers or {}):
                await self._answer(properties.reply_to, call_id, b"held")
        elif properties.message_type == wire.CREDIT and call_id:
            shared.frames.granted(call_id, wire.credits_from(properties))
        elif properties.message_type == RESUME and properties.reply_to:
            await self._resume(message.body, properties.reply_to)
        elif properties.message_type == "cancel" and call_id:
            shared.cancelled.put(call_id, None)
            task = shared.running.get(call_id)
            if task is not None:
                log.debug("cancelling call %s at its caller's request", call_id)
                task.cancel()

    async def _resume(self, body: bytes, reply_to: str) -> None:
        channels = self.shared.link.channels
        try:
            call_ids = unpack_ids(body)
        except ValueError as exc:
            log.warning("dropped a malformed resume: %s", exc)
            return
        if channels is None:
            return  # the caller asks again
        try:
            await self.shared.settlement.resume(
                channels.serve_raw, call_ids, reply_to, self.shared.kept_reply
            )
        except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
            log.debug("could not resume calls: %s", describe(exc))

    async def _answer(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        channels = self.shared.link.channels
        if channels is None or correlation_id is None:
            return
        reply = Reply(call_id=correlation_id, ok=True, content_type="", body=body)
        try:
            await channels.calls_raw.basic_publish(
                body, routing_key=reply_to, properties=wire.reply_properties(reply)
            )
        except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
            log.debug("could not answer a %s query: %s", LEASE, describe(exc))

    async def _answer_inspect(self, reply_to: str, correlation_id: str | None) -> None:
        statistics = self.statistics()
        link = self.shared.link
        channels = link.channels
        if statistics is None or channels is None:
            return
        host, _, pid = SERVER_ID.rpartition(":")
        answer = {
            **statistics,
            "server": SERVER_ID,
            "host": host,
            "pid": int(pid),
            "uptime": time.time() - self.started,
            "events": link.events,
        }
        try:
            await channels.calls_raw.basic_publish(
                json.dumps(answer).encode(),
                routing_key=reply_to,
                properties=Basic.Properties(
                    content_type="application/json", correlation_id=correlation_id
                ),
            )
        except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
            log.debug("could not answer an inspect request: %s", describe(exc))
