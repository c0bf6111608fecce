"""Batches: calls a caller coalesced into one message, served call by call, each in a task of
its own as if it had come alone; replies to one caller that are ready together travel together.
The message settles by ``policies.settle_batch``."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import Container, Mapping
from functools import partial

from atasks.errors import TransportError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.server.confirms import Confirms, replied
from atasks.transport.backends.amqp.server.message import Message, fitting, handled, suspect_of
from atasks.transport.backends.amqp.server.overflow import Overflow
from atasks.transport.backends.amqp.server.policies import (
    Outcome,
    Verdict,
    cancelled_outcome,
    settle_batch,
)
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.backends.amqp.server.suspects import Suspects
from atasks.transport.contract import RequestHandler
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.amqp")

Ended = tuple[Outcome, Reply | None]
"""How one call of a batch ended, and its reply if it has one."""


class Batches:
    """Serves batch messages."""

    def __init__(self, shared: Shared, suspects: Suspects) -> None:
        self.shared = shared
        self.suspects = suspects

    async def serve(self, intake: Intake, message: Message) -> None:
        """Serve a batch: each call as if it had come alone, in a task of its own. The message
        is acked once every call is answered (its reply sent) or handed back to the queue in a
        new message: calls that found no slot free within ``overflow.WAIT``, and those a
        stopping server had not finished."""
        shared, settlement = self.shared, self.shared.settlement
        name = intake.name
        held: dict[str, asyncio.Event] = {}  # calls queued alone, waiting for this ack
        overflow: Overflow | None = None  # calls waiting for a slot
        try:
            await settlement.overtaken(message.correlation_id or "")
            if wire.H_LEASE_HOLDER in message.headers and await shared.leases.still_held(
                message.properties
            ):
                await message.ack()
                return
            try:
                if intake is shared.suspects:
                    name = suspect_of(message)
                    raise ValueError("a batch in the suspects queue, where each call goes alone")
                if not message.reply_to or not message.correlation_id:
                    raise ValueError("a batch without reply_to or correlation_id")
                requests = wire.batch_from(name, message.properties, message.body)
            except ValueError as exc:
                log.warning("dead-lettered a malformed batch for %r: %s", name, exc)
                await settlement.dead_letter(
                    name, message, "rejected", "atasks.errors.DecodeError", str(exc)
                )
                return
            handler = shared.handlers.get(name)
            if handler is None:  # delivered while this server stopped serving it
                await settlement.requeue(name, message, message.headers)
                return
            answered = self._answered(message, requests)
            # Not answered, not kept, not running here: these run (or go back to the queue).
            kept: Container[str] = shared.kept if shared.kept else ()  # almost always empty
            sent, inflight = shared.settlement.resuming.sent.ids, shared.inflight
            fresh = [
                r
                for r in requests
                if r.call_id not in answered
                and r.call_id not in kept
                and r.call_id not in sent
                and r.call_id not in inflight
            ]
            runs: list[Request] = []
            if fresh:
                verdict, deaths = self.suspects.verdict(message, isolated=False)
                if verdict is Verdict.RUN:
                    runs, overflow = self._take_slots(intake, message, fresh)
                else:
                    held = await self.suspects.carry_out(name, message, verdict, deaths, fresh)
            elsewhere = {r.call_id for r in fresh} - {r.call_id for r in runs}
            confirms = Confirms(shared.kept)
            with shared.leases.holding(name, message):
                entries = {
                    r.call_id: (
                        r,
                        self._start(name, message, r, handler, answered, confirms, overflow),
                    )
                    for r in requests
                    if r.call_id not in elsewhere
                }
                ended = await self._ended(entries, confirms)
            handled(intake, message)
            settling = settle_batch({call_id: outcome for call_id, (outcome, _) in ended.items()})
            if settling.hand_back:
                back = set(settling.hand_back)
                unfinished = [r for r in requests if r.call_id in back]
                await settlement.publish_copy(name, message, message.headers, unfinished)
            if settling.ack:
                await message.ack()
                if shared.kept:  # answered for good: forget their replies
                    for call_id in ended:
                        shared.kept.forget_sent(call_id)
                if held:  # a round trip on the channel: the broker answers after the ack
                    await message.channel.exchange_declare("amq.direct", passive=True)
        except asyncio.CancelledError:  # the server stops before any call of it ran
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.nack(requeue=True)
            raise
        except CONNECTION_ERRORS as exc:
            log.warning("batch %s of %r not finished: %s", message.correlation_id, name, exc)
            with contextlib.suppress(*CONNECTION_ERRORS):  # on a live channel, try again
                await message.nack(requeue=True)
        finally:
            if overflow is not None:
                overflow.close()
            settlement.release(held)

    def _answered(self, message: Message, requests: list[Request]) -> dict[str, Reply]:
        """The calls of a batch answered without running: over the size limit, or cancelled."""
        answered: dict[str, Reply] = {}
        size, limit = len(message.body), self.shared.link.max_message_size
        for request in requests:
            if size > limit:
                answered[request.call_id] = Reply.failure(
                    request.call_id,
                    TransportError(
                        f"a batch of {size} bytes is over this server's {limit}-byte limit"
                    ),
                )
            elif request.call_id in self.shared.cancelled:
                answered[request.call_id] = Reply.failure(
                    request.call_id, TransportError("cancelled by its caller")
                )
        return answered

    def _take_slots(
        self, intake: Intake, message: Message, requests: list[Request]
    ) -> tuple[list[Request], Overflow | None]:
        """The calls of a batch that run here: those that got a free slot, and the others,
        which wait for one (``overflow.py``; in a delivery that may have killed a server, for
        as long as it takes)."""
        capacity = self.shared.capacity
        if capacity is None:
            return requests, None
        waiting: list[Request] = []
        for request in requests:
            if capacity.try_take():
                request.slot_taken = True
            elif not message.redelivered:
                waiting.append(request)
        if not waiting:
            return requests, None
        return requests, Overflow(capacity, waiting, partial(self._hand_back, intake, message))

    async def _hand_back(self, intake: Intake, message: Message, requests: list[Request]) -> None:
        """Queue calls of ``message`` that found no slot here again, in a batch of their own, for
        another server; take no more from their queue until a slot frees."""
        self.shared.pause(intake, message)
        log.debug("no free slot for %d calls of %r: handed back", len(requests), intake.name)
        await self.shared.settlement.publish_copy(intake.name, message, message.headers, requests)

    def _start(
        self,
        name: str,
        message: Message,
        request: Request,
        handler: RequestHandler,
        answered: Mapping[str, Reply],
        confirms: Confirms,
        overflow: Overflow | None,
    ) -> asyncio.Task[Ended]:
        call_id = request.call_id
        waits = overflow if overflow is not None and call_id in overflow else None
        task = asyncio.get_running_loop().create_task(
            self._serve_entry(
                name, message, request, handler, answered.get(call_id), confirms, waits
            ),
            context=contextvars.Context(),
        )
        running = self.shared.running
        running[call_id] = task
        confirms.pending += 1  # the batch waits for its calls as for their replies

        def ended(done: asyncio.Task[Ended]) -> None:
            if running.get(call_id) is done:
                del running[call_id]
            confirms.ended()

        task.add_done_callback(ended)
        return task

    async def _serve_entry(
        self,
        name: str,
        message: Message,
        request: Request,
        handler: RequestHandler,
        answer: Reply | None,
        confirms: Confirms,
        overflow: Overflow | None,
    ) -> Ended:
        """One call of a batch, from start to its reply handed over (``confirms`` hears how its
        publish ends); first, in ``overflow``, waiting for a slot."""
        call_id = request.call_id
        try:
            if overflow is not None:
                try:
                    if not await overflow.slot(request):
                        return Outcome.ELSEWHERE, None
                except CONNECTION_ERRORS:  # not handed back: the batch tries again
                    return Outcome.BACK, None
            reply = answer
            if reply is None and not request.slot_taken:
                reply = await self.shared.known_outcome(name, message, call_id, hold=False)
            if reply is None:
                assert message.reply_to is not None
                self.shared.frames.attach(request, message.reply_to)
                reply = await self.shared.run(name, request, handler)
        except asyncio.CancelledError:  # by its caller (done), or this server stops
            return cancelled_outcome(call_id in self.shared.cancelled), None
        assert message.reply_to is not None
        sent = fitting(reply, self.shared.link)
        self.shared.settlement.reply_soon(message, sent, confirms, reply)
        return Outcome.ANSWERED, reply

    async def _ended(
        self, entries: Mapping[str, tuple[Request, asyncio.Task[Ended]]], confirms: Confirms
    ) -> dict[str, Ended]:
        """How each call of a batch ended, once all have and every reply they handed over is
        published (or not: handed back, kept, and sent should the connection be back already).
        Should the server stop meanwhile (this task is cancelled), so do they, and a reply not
        published yet counts as cut short."""
        try:
            await confirms.wait()
        except asyncio.CancelledError:
            tasks = {task for _, task in entries.values()}
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.wait(tasks)
            current = asyncio.current_task()
            if current is not None:
                current.uncancel()  # what it was told to do, it does: settle the batch
            confirms.cut_short()
        ended: dict[str, Ended] = {}
        for call_id, (request, task) in entries.items():
            if not task.cancelled():
                ended[call_id] = task.result()
                continue
            self.shared.give_back_slot(request)  # cancelled before it started: never adopted
            ended[call_id] = cancelled_outcome(call_id in self.shared.cancelled), None
        kept = False
        for call_id, exc in confirms.failed.items():
            outcome = replied(exc, call_id in self.shared.cancelled)
            kept = kept or outcome is Outcome.KEPT
            ended[call_id] = outcome, ended[call_id][1]
        if kept and self.shared.link.is_ready:  # the old channel had simply gone
            await self.shared.kept.send()
        return ended
