"""Serving one delivered request, written once for every transport: take → run → reply → settle.

A transport delivers requests; how it settles one (acks it, hands it back for another server,
dead-letters it, replies to its caller) is the ``Delivery`` it implements. What a server does
with a delivery is the same everywhere and lives here:

- a call gets its reply, then is acked; a fire-and-forget request that succeeded is acked, one
  that failed is dead-lettered with its last error;
- a delivery whose serving is cancelled is acked when its caller cancelled it or its reply was
  out already, else handed back for another server (a stream, whose caller may hold some of its
  items, is answered "interrupted" instead: it is not restarted);
- a handler that breaks its contract (raises) still gets its call answered.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from atasks.errors import StreamInterrupted
from atasks.transport.contract import RequestHandler
from atasks.transport.messages import Reply, Request, dead_reason

log = logging.getLogger("atasks.transport")

__all__ = ["Delivery", "Run", "Taken", "after_cancel", "run", "serve", "settle"]


class Delivery(Protocol):
    """One request as a transport delivered it, and how that transport settles it (once)."""

    @property
    def name(self) -> str:
        """The atask it is for ("" when it does not say)."""

    @property
    def call_id(self) -> str:
        """Its call id ("" when it does not say)."""

    @property
    def wants_reply(self) -> bool:
        """Whether a caller waits for its reply (not fire and forget, not a broadcast)."""

    @property
    def settled(self) -> bool:
        """Whether it was acked, handed back or dead-lettered already."""

    @property
    def restartable(self) -> bool:
        """Whether another server may run it from the start: not a stream (its caller may hold
        some of its items)."""

    @property
    def cancelled_by_caller(self) -> bool:
        """Whether its caller cancelled the call: nothing is left to answer."""

    @property
    def lost(self) -> tuple[type[BaseException], ...]:
        """The errors that mean the transport lost its connection while settling."""

    async def ack(self) -> None:
        """Done with it, for good."""

    async def hand_back(self) -> None:
        """Give it back for another server, as it came (publishing a copy where need be); not a
        delivery that failed."""

    async def dead_letter(self, reason: str, error_type: str, error_message: str) -> None:
        """Keep it as a dead letter, with why (``reason``) and its last error; then ack it."""

    async def reply(self, reply: Reply) -> None:
        """Send ``reply`` to its caller, then ack it (or, should the reply be refused, leave it to
        run again)."""

    async def keep(self, reply: Reply, error: BaseException) -> None:
        """Its outcome could not be settled: the connection was lost (``error``, one of
        ``lost``). Keep it for the next connection, or for a redelivery."""


Run = Callable[[], Awaitable[Reply]]
"""Runs a taken request: its reply."""
Taken = Run | Reply | None
"""What taking a delivery gave: a request to run, an outcome known without running it (a
refusal, a reply kept from an earlier delivery), or nothing (taking settled it already)."""


async def serve(delivery: Delivery, take: Callable[[], Awaitable[Taken]]) -> None:
    """Serve ``delivery``: take it (``take``), run it, reply and settle; hand it back should the
    serving be cancelled. Errors in ``delivery.lost`` reach the caller, except when settling the
    outcome of a request that ran: that outcome is kept instead."""
    replied = False
    try:
        taken = await take()
        if taken is None:
            return
        if isinstance(taken, Reply):
            await settle(delivery, taken)
            return
        reply = await taken()
        replied = True
        try:
            await settle(delivery, reply)
        except delivery.lost as exc:
            await delivery.keep(reply, exc)
    except asyncio.CancelledError:
        await after_cancel(delivery, replied=replied)


async def run(name: str, request: Request, handler: RequestHandler) -> Reply:
    """``handler(request)``; a handler breaking its contract (raising) still gives a reply."""
    try:
        return await handler(request)
    except Exception as exc:
        log.exception("the handler of %r failed on request %s", name, request.call_id)
        return Reply.failure(request.call_id, exc)


async def settle(delivery: Delivery, reply: Reply) -> None:
    """Settle ``delivery`` with its outcome: reply and ack a call; ack a fire-and-forget or
    broadcast request that succeeded, dead-letter one that failed."""
    if delivery.wants_reply:
        await delivery.reply(reply)
    elif reply.ok:
        await delivery.ack()
    else:
        reason = dead_reason(reply)
        # INFO: its handler (the router) logged the failure (ERROR) or the refusal (WARNING).
        log.info(
            "fire-and-forget call %s of %r %s: %s: %s; dead-lettered",
            reply.call_id,
            delivery.name,
            reason,
            reply.error_type,
            reply.error_message,
        )
        await delivery.dead_letter(reason, reply.error_type, reply.error_message)


async def after_cancel(delivery: Delivery, *, replied: bool) -> None:
    """Settle a delivery whose serving was cancelled: the server stops, or its caller cancelled
    it. Losing the connection meanwhile leaves it to the broker."""
    if delivery.settled:  # cancelled while settling: nothing left to do
        return
    try:
        if replied or delivery.cancelled_by_caller:
            await delivery.ack()  # answered, or cancelled by its caller: done with it
        elif delivery.wants_reply and not delivery.restartable:
            stopped = StreamInterrupted("the server that ran it stopped, mid-stream")
            await delivery.reply(Reply.failure(delivery.call_id, stopped))
        else:  # this server is shutting down: hand the request to another server
            await delivery.hand_back()
    except delivery.lost:
        pass
