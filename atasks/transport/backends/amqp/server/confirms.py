"""The replies of one batch on their way to the broker: how each one's publish ended, counted
without a future or a task per reply (``Coalescer.put`` would make one each).

A call of a batch hands its reply over and ends; the batch waits once for all its replies'
publishes, then settles its message.
"""

from __future__ import annotations

import asyncio
import logging

import aiormq

from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe
from atasks.transport.backends.amqp.server.kept import Kept, KeptReplies
from atasks.transport.backends.amqp.server.policies import Outcome, cancelled_outcome
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")


class Confirms:
    """The calls of one batch running and their replies being published (``pending`` counts
    both), and how each publish that failed did."""

    __slots__ = ("_all", "failed", "kept", "pending", "sending_now")

    def __init__(self, kept: KeptReplies) -> None:
        self.kept = kept
        self.pending = 0
        self.failed: dict[str, BaseException] = {}
        """Call id → why its reply was not sent (``CancelledError``: cancelled on its way)."""
        self._all: asyncio.Future[None] | None = None
        self.sending_now: list[Sent] = []

    def sending(self, reply_to: str, reply: Reply, *, keep: bool) -> Sent:
        """The waiter of ``reply``'s publish (to ``reply_to``, or where its call moved); with
        ``keep``, it is kept once sent until the batch is acked (a reply to a direct address
        is kept already, by ``resuming``, before it is sent)."""
        self.pending += 1
        sent = Sent(self, reply_to, reply, keep)
        self.sending_now.append(sent)
        return sent

    def cut_short(self) -> None:
        """The server stops: every publish not ended yet counts as cancelled."""
        for sent in self.sending_now:
            sent.cancel()

    async def wait(self) -> None:
        """Until every call has ended and every reply's publish too."""
        if self.pending:
            self._all = asyncio.get_running_loop().create_future()
            await self._all

    def ended(self) -> None:
        self.pending -= 1
        if self.pending:
            return
        # All ended: let go of the waiters, each of which refers back to this object (a cycle
        # per reply that only the garbage collector would free, a full collection later).
        self.sending_now.clear()
        if self._all is not None and not self._all.done():
            self._all.set_result(None)


class Sent:
    """What the coalescer of replies tells when one reply's publish ends (a future's
    interface: ``done``, ``set_result``, ``set_exception``, ``cancel``)."""

    __slots__ = ("_done", "confirms", "keep", "reply", "reply_to")

    def __init__(self, confirms: Confirms, reply_to: str, reply: Reply, keep: bool) -> None:
        self.confirms = confirms
        self.reply_to = reply_to
        self.reply = reply
        self.keep = keep
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, _: object) -> None:
        if not self._end():
            return
        if self.keep:  # should its delivery be lost with the connection before the ack, the
            # call is answered from here when it comes again, not run again
            self.confirms.kept.keep(Kept(self.reply_to, self.reply, sent=True))
        self.confirms.ended()

    def set_exception(self, exc: BaseException) -> None:
        if not self._end():
            return
        call_id = self.reply.call_id
        if isinstance(exc, aiormq.exceptions.DeliveryError):
            log.warning(
                "the broker refused the reply to %s (%s): handed back", call_id, describe(exc)
            )
        elif isinstance(exc, CONNECTION_ERRORS):
            # Kept at once: a redelivery on the next connection finds it (sent by the batch).
            log.info("kept the reply to %s until the broker is back (%s)", call_id, describe(exc))
            self.confirms.kept.keep(Kept(self.reply_to, self.reply))
        self.confirms.failed[call_id] = exc
        self.confirms.ended()

    def cancel(self) -> bool:
        if not self._end():
            return False
        self.confirms.failed[self.reply.call_id] = asyncio.CancelledError()
        self.confirms.ended()
        return True

    def _end(self) -> bool:
        if self._done:
            return False
        self._done = True
        return True


def replied(exc: BaseException, by_caller: bool) -> Outcome:
    """How a call of a batch whose reply was not sent (``exc``) ended; any other error is
    raised. ``by_caller``: its caller cancelled it."""
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return Outcome.BACK
    if isinstance(exc, CONNECTION_ERRORS):
        return Outcome.KEPT
    if isinstance(exc, asyncio.CancelledError):
        return cancelled_outcome(by_caller)
    raise exc
