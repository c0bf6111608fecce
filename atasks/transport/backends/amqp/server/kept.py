"""Replies kept while the connection is gone: sent once it is back, and answering a request
delivered again after a lost connection (it is not run twice)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiormq

from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.resume import is_direct
from atasks.transport.backends.amqp.server.policies import KEPT_FOR, KEPT_MAX, Memory
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")


@dataclass(slots=True)
class Kept:
    """A reply that could not be sent when its call finished: the connection was gone."""

    reply_to: str
    reply: Reply
    sent: bool = False


class KeptReplies:
    """The kept replies of one server, by call id (``KEPT_MAX`` of them, for ``KEPT_FOR``)."""

    def __init__(self, link: Link, clock: Callable[[], float] = time.monotonic) -> None:
        self.link = link
        self.memory: Memory[str, Kept] = Memory(KEPT_MAX, KEPT_FOR, clock)
        self._sending = False
        self._send_again = False

    def keep(self, kept: Kept) -> None:
        self.memory.put(kept.reply.call_id, kept)

    def get(self, call_id: str) -> Kept | None:
        return self.memory.get(call_id)

    def forget_sent(self, call_id: str) -> None:
        """Forget the reply of ``call_id`` if it was sent: it is answered for good."""
        kept = self.memory.get(call_id)
        if kept is not None and kept.sent:
            self.memory.forget(call_id)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self.memory

    def __bool__(self) -> bool:
        return len(self.memory) > 0

    async def keep_unsent(self, reply_to: str, reply: Reply, exc: BaseException) -> None:
        """Keep ``reply`` that could not be sent (``exc``), and send it now should the
        connection be back already (the old channel had simply gone)."""
        log.info("kept the reply to %s until the broker is back (%s)", reply.call_id, describe(exc))
        self.keep(Kept(reply_to, reply))
        if self.link.is_ready:
            await self.send()

    async def send(self) -> None:
        """Send every kept reply not sent yet, once each: one pass at a time, and another pass
        if more were kept meanwhile."""
        if self._sending:
            self._send_again = True
            return
        self._sending = True
        try:
            self._send_again = True
            while self._send_again:
                self._send_again = False
                channels = self.link.channels
                if channels is None:
                    return
                for kept in [kept for kept in self.memory.values() if not kept.sent]:
                    try:
                        channel = (
                            channels.serve_raw if is_direct(kept.reply_to) else channels.calls_raw
                        )
                        await channel.basic_publish(
                            kept.reply.body,
                            routing_key=kept.reply_to,
                            properties=wire.reply_properties(kept.reply, announce=True),
                        )
                    except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
                        log.debug("could not send kept replies yet: %s", describe(exc))
                        return  # the next connection tries again
                    kept.sent = True
        finally:
            self._sending = False
