"""Lone requests (not batches): what taking one from its queue involves before it runs, on top
of the serve pipeline that every transport shares (``atasks.transport.serving``)."""

from __future__ import annotations

import contextlib
import logging
from functools import partial

from atasks.errors import StreamInterrupted, TransportError
from atasks.transport import serving
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.server.delivery import CallDelivery
from atasks.transport.backends.amqp.server.message import (
    Message,
    delivered_before,
    fitting,
    handled,
    suspect_of,
)
from atasks.transport.backends.amqp.server.policies import Verdict
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.backends.amqp.server.suspects import SUSPECT_HANDLER_WAIT, Suspects
from atasks.transport.contract import RequestHandler
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.amqp")


class LoneRequests:
    """Serves requests that came alone, from an atask's queue or the suspects queue."""

    def __init__(self, shared: Shared, suspects: Suspects) -> None:
        self.shared = shared
        self.suspects = suspects

    async def serve(self, intake: Intake, message: Message) -> None:
        isolated = intake is self.shared.suspects
        name = suspect_of(message) if isolated else intake.name
        delivery = CallDelivery(self.shared, name, message)
        try:
            await serving.serve(delivery, partial(self._take, intake, message, name, isolated))
        except CONNECTION_ERRORS as exc:
            log.warning(
                "request %s of %r not finished: %s", message.correlation_id, name, describe(exc)
            )
            with contextlib.suppress(*CONNECTION_ERRORS):  # on a live channel, try again
                await message.nack(requeue=True)

    async def _take(
        self, intake: Intake, message: Message, name: str, isolated: bool
    ) -> serving.Taken:
        """What to do with ``message``: run it, answer it without running it, or nothing more
        (settled here already: refused, dropped, handed back, isolated…)."""
        shared, settlement = self.shared, self.shared.settlement
        call_id = message.correlation_id
        if not call_id or not name:
            missing = f"header {wire.H_SUSPECT_OF}" if call_id else "correlation_id"
            log.warning("dead-lettered a request for %r without %s", name, missing)
            await settlement.dead_letter(
                name,
                message,
                "rejected",
                "atasks.errors.DecodeError",
                f"the request has no {missing}",
            )
            return None
        await settlement.overtaken(call_id)  # our copy overtook the ack of its original
        if call_id in shared.cancelled:
            log.debug("dropped request %s: cancelled before it ran", call_id)
            if message.reply_to:
                return Reply.failure(call_id, TransportError("cancelled by its caller"))
            await message.ack()
            return None
        if wire.H_LEASE_HOLDER in message.headers and await shared.leases.still_held(
            message.properties
        ):  # an expired lease of a call its holder still runs, or has run
            await message.ack()
            return None
        if wire.window_from(message.headers) and delivered_before(message):
            # A stream is at most once per item: its caller has some of its items already.
            interrupted = StreamInterrupted(
                "the server that ran it was lost, and a stream is not restarted"
            )
            return Reply.failure(call_id, interrupted)
        known = await shared.known_outcome(name, message, call_id)
        if known is not None:  # run here already, its first delivery lost with a connection
            return known
        verdict, deaths = self.suspects.verdict(message, isolated=isolated)
        if verdict is not Verdict.RUN:
            await self.suspects.carry_out(name, message, verdict, deaths)
            return None
        handler = shared.handlers.get(name)
        if handler is None and isolated:
            handler = await shared.handler_within(name, SUSPECT_HANDLER_WAIT)
        if handler is None:  # delivered while this server stopped serving it
            # A suspect too goes to its atask's queue, where a server that serves it runs it.
            headers = {**message.headers, wire.H_UNISOLATED: 1} if isolated else message.headers
            await settlement.requeue(name, message, headers)
            return None
        request = shared.request_from(name, message)
        if isinstance(request, Reply):
            return request
        capacity = shared.capacity
        if capacity is not None:
            if capacity.try_take():
                request.slot_taken = True
            elif not (isolated or message.redelivered):  # these wait for a slot here
                await self._give_back(intake, message)
                return None
        return partial(self._run, intake, message, name, request, handler)

    async def _run(
        self, intake: Intake, message: Message, name: str, request: Request, handler: RequestHandler
    ) -> Reply:
        try:
            with self.shared.leases.holding(name, message):
                reply = await self.shared.run(name, request, handler)
        finally:
            handled(intake, message)  # before the reply's round trip: credit is back
        return fitting(reply, self.shared.link)

    async def _give_back(self, intake: Intake, message: Message) -> None:
        """No slot is free: return the request to its queue for another server, and take no
        more from that queue until a slot frees."""
        self.shared.pause(intake, message)
        log.debug(
            "no free slot for request %s of %r: handed back", message.correlation_id, intake.name
        )
        await self.shared.settlement.requeue(intake.name, message, message.headers)
