"""A request message as delivered, and what a server reads of it: no settling policy here."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from atasks.errors import EncodeError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import Link
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.amqp")


class Message:
    """A request as delivered: what a server reads of it, and how it settles it once."""

    __slots__ = (
        "body",
        "channel",
        "confirming",
        "consumer_tag",
        "correlation_id",
        "counted",
        "properties",
        "received",
        "redelivered",
        "reply_to",
        "settled",
        "tag",
    )

    def __init__(self, delivered: DeliveredMessage, confirming: aiormq.abc.AbstractChannel) -> None:
        self.body = delivered.body
        self.channel = delivered.channel
        """Where it came from: its acks, and its direct replies (unconfirmed, in order before
        the ack)."""
        self.confirming = confirming
        """A channel of the same connection with publisher confirms: what is published for it
        that must be confirmed before its ack (copies, dead letters, durable replies)."""
        self.properties: Basic.Properties = delivered.header.properties
        self.correlation_id: str | None = self.properties.correlation_id
        self.reply_to: str | None = self.properties.reply_to
        self.tag = delivered.delivery_tag or 0
        self.consumer_tag: str | None = getattr(delivered.delivery, "consumer_tag", None)
        self.redelivered = bool(delivered.redelivered)
        self.settled = False  # settling twice would make the broker close the channel
        self.counted = False  # in its consumer's live deliveries
        self.received = time.monotonic()

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def is_batch(self) -> bool:
        return self.properties.message_type == wire.BATCH

    async def ack(self) -> None:
        """Queued behind what was published on its channel before; not waiting for its write
        (lost with the connection, the request comes again and finds its kept reply)."""
        if not self.settled:
            self.settled = True
            await self.channel.basic_ack(self.tag, wait=False)

    async def reject(self, *, requeue: bool) -> None:
        if not self.settled:
            self.settled = True
            await self.channel.basic_reject(self.tag, requeue=requeue)

    async def nack(self, *, requeue: bool) -> None:
        if not self.settled:
            self.settled = True
            await self.channel.basic_nack(self.tag, requeue=requeue)


def handled(intake: Intake, message: Message) -> None:
    """``message`` no longer counts against its consumer's prefetch (once)."""
    if message.counted and message.consumer_tag is not None:
        message.counted = False
        intake.handled(message.consumer_tag)


def fitting(reply: Reply, link: Link) -> Reply:
    """``reply``, or a failure saying it is over the message size limit (the broker would
    close the channel, and every call on it with it)."""
    size, limit = len(reply.body), link.max_message_size
    if size <= limit:
        return reply
    log.warning("the reply to %s is %d bytes, over the %d-byte limit", reply.call_id, size, limit)
    return Reply.failure(
        reply.call_id,
        EncodeError(
            f"the {'result' if reply.ok else 'exception'} is {size} bytes, over the "
            f"{limit}-byte message size limit"
        ),
    )


def part(
    message: Message, requests: list[Request] | None, batch_id: str | None = None
) -> tuple[bytes, Basic.Properties]:
    """The body and properties of ``message``, or of a new batch of some of its calls (with
    ``batch_id``, or a new one)."""
    if requests is None:
        return message.body, message.properties
    batch_id = batch_id or new_batch_id()
    assert message.reply_to is not None
    persistent = message.properties.delivery_mode == wire.PERSISTENT
    properties = wire.batch_properties(requests, batch_id, message.reply_to, persistent=persistent)
    return wire.pack_requests(requests), properties


def new_batch_id() -> str:
    return f"{wire.BATCH}:{secrets.token_hex(8)}"


def only(headers: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: headers[key] for key in keys if key in headers}


def without(headers: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in headers.items() if key not in keys}


def suspect_of(message: Message) -> str:
    """The atask a request in the suspects queue is for ("" if it does not say)."""
    name = message.headers.get(wire.H_SUSPECT_OF)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name if isinstance(name, str) else ""


def delivered_before(message: Message) -> bool:
    """Whether a request may have run before: redelivered, or a copy made after a delivery."""
    headers = message.headers
    count = headers.get(wire.BROKER_DELIVERY_COUNT)
    return (
        message.redelivered
        or wire.deaths(headers) > 0
        or (isinstance(count, int) and count > 0)
        or wire.H_LEASE_HOLDER in headers
    )


def died_running(atask: str, deliveries: int | None) -> str:
    """The last error of a request for ``atask`` dead-lettered at its delivery limit."""
    times = f" {deliveries} times" if deliveries else ""
    return (
        f"atask {atask!r} was delivered{times}, and each time its server died, was killed or "
        "lost its connection while running it"
    )
