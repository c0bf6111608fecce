"""A delivered request message as the serve pipeline (``atasks.transport.serving``) settles it."""

from __future__ import annotations

import contextlib
import logging

import aiormq

from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS
from atasks.transport.backends.amqp.server.kept import Kept
from atasks.transport.backends.amqp.server.message import Message
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")


class CallDelivery:
    """A request from an atask's queue (or the suspects queue): a call, or fire and forget."""

    __slots__ = ("message", "name", "shared")

    lost = CONNECTION_ERRORS

    def __init__(self, shared: Shared, name: str, message: Message) -> None:
        self.shared = shared
        self.name = name
        self.message = message

    @property
    def call_id(self) -> str:
        return self.message.correlation_id or ""

    @property
    def wants_reply(self) -> bool:
        return bool(self.message.reply_to)

    @property
    def settled(self) -> bool:
        return self.message.settled

    @property
    def restartable(self) -> bool:
        return not (self.call_id and wire.window_from(self.message.headers))

    @property
    def cancelled_by_caller(self) -> bool:
        return bool(self.call_id) and self.call_id in self.shared.cancelled

    async def ack(self) -> None:
        await self.message.ack()

    async def hand_back(self) -> None:
        """A fresh copy to its atask's queue, then the ack; failing that, back to the broker
        as it came (the delivery then counts)."""
        try:
            await self.shared.settlement.requeue(self.name, self.message, self.message.headers)
        except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError):
            await self.message.nack(requeue=True)

    async def dead_letter(self, reason: str, error_type: str, error_message: str) -> None:
        try:
            await self.shared.settlement.dead_letter(
                self.name, self.message, reason, error_type, error_message
            )
        except aiormq.exceptions.DeliveryError as exc:  # kept: it runs again
            log.warning("the broker refused the dead letter of %s: %s", self.call_id, exc)
            await self.message.nack(requeue=True)

    async def reply(self, reply: Reply) -> None:
        await self.shared.settlement.reply_and_ack(self.message, reply)

    async def keep(self, reply: Reply, error: BaseException) -> None:
        """The connection went before its outcome was settled: the broker delivers the request
        again, and what is kept answers it (a reply is sent once reconnected)."""
        reply_to = self.message.reply_to
        if reply_to:
            await self.shared.kept.keep_unsent(reply_to, reply, error)
        else:
            log.info("kept the outcome of %s for its redelivery (%s)", reply.call_id, error)
            self.shared.kept.keep(Kept("", reply, sent=True))


class CopyDelivery(CallDelivery):
    """This server's copy of a broadcast: never handed to another server, nor kept."""

    __slots__ = ()

    @property
    def cancelled_by_caller(self) -> bool:
        return False  # a cancellation is for a call, not for copies of a broadcast

    async def hand_back(self) -> None:
        """Back to this server's own queue, which goes with this server."""
        with contextlib.suppress(*CONNECTION_ERRORS):
            await self.message.nack(requeue=True)

    async def keep(self, reply: Reply, error: BaseException) -> None:
        log.warning("broadcast %s of %r not finished: %s", self.call_id, self.name, error)
