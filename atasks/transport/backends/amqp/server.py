"""The serve side: consume request queues within the server's capacity, run each request through
the router's handler, reply, and only then ack; broadcast requests, cancellations, credits,
inspect requests and events.

A request without ``reply_to`` is fire and forget: acked once its handler finished, or, when it
failed, dead-lettered (confirmed, then acked) with its last error.

A batch (calls coalesced by their caller) is served call by call, each in a task of its own, as
if each had come alone; replies to one caller that are ready together travel together.

A request held by servers that died twice (``ISOLATE_AFTER``) is a suspect: it goes, alone, to
the namespace's suspects queue, which every server takes one request at a time. So a request
that kills its servers reaches the delivery limit without taking the calls beside it along."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from atasks.errors import EncodeError, StreamInterrupted, TransportError
from atasks.events import SERVER_ID, Event, encode_batch
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.coalesce import Coalescer
from atasks.transport.backends.amqp.connection import (
    CONNECTION_ERRORS,
    Channels,
    Link,
    describe,
    is_consumer_timeout,
)
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.lease import LEASE, Ask, Leases
from atasks.transport.backends.amqp.streams import Frames
from atasks.transport.backends.amqp.topology import Topology, declare_all
from atasks.transport.base import Capacity, Reply, Request, RequestHandler, dead_reason

log = logging.getLogger("atasks.amqp")

EVENTS_FLUSH = 0.05  # seconds between two messages of batched events
CANCELLED_KEPT = 100_000  # ids of cancelled calls remembered, at most…
CANCELLED_FOR = 3600.0  # …and for at most this long
UNBOUNDED_PREFETCH = 64  # served without a router's capacity (register_callback by hand)
KEPT_MAX = 100_000  # replies kept for a lost connection, at most…
KEPT_FOR = 600.0  # …and for at most this long
UNREGISTER_WITHIN = 10.0  # seconds for the broker to stop a queue's consumer or unbind it
REPLY_BATCH = 256  # replies in one message, at most
ISOLATE_AFTER = 2  # deaths of servers holding a request, after which it runs alone
SUSPECTS = "(suspects)"  # the intake of the suspects queue
SUSPECT_HANDLER_WAIT = 5.0  # seconds a suspect waits for its atask to register (at start)


class Outcome(enum.Enum):
    """How one call of a batch ended, as its message sees it."""

    ANSWERED = "answered"  # its reply is confirmed, or its caller cancelled it
    BACK = "back"  # to hand back to the queue: the server stops, or the broker refused the reply
    KEPT = "kept"  # its reply waits for the connection to come back


class Verdict(enum.Enum):
    """What a delivery's count of dead servers makes of it."""

    RUN = "run"  # no death, or the quorum queue counts them
    COUNT = "count"  # classic queue: back to its queue with the death counted
    ISOLATE = "isolate"  # to the suspects queue, to run alone
    DEAD = "dead"  # dead-lettered at the delivery limit


@dataclass(slots=True)
class Kept:
    """A reply that could not be sent when its call finished: the connection was gone."""

    reply_to: str
    reply: Reply
    sent: bool = False
    at: float = field(default_factory=time.monotonic)


class Server:
    """Serves the atasks registered with ``register`` through ``link``."""

    def __init__(
        self,
        link: Link,
        topology: Topology,
        *,
        statistics: Callable[[], Mapping[str, Any] | None],
        consumer_timeout: float,
        ask: Ask,
        events: bool = False,
    ) -> None:
        self.link = link
        self.events = events  # publish a "dead" event for each request it dead-letters
        self.topology = topology
        self.statistics = statistics
        self.started = time.time()
        self.handlers: dict[str, RequestHandler] = {}
        self._leases = Leases(link, topology, consumer_timeout, ask)
        self._frames = Frames(link)
        self._intakes: dict[str, Intake] = {}
        self._capacity: Capacity | None = None
        self._rebalancing: asyncio.Task[None] | None = None
        self._rebalance_again = False
        self._poked = False
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._held: dict[int, Delivery] = {}  # every delivery being served, settled or not
        self._cancelled: dict[str, float] = {}
        self._requeueing: dict[str, asyncio.Event] = {}
        self._inflight: dict[str, asyncio.Future[Reply]] = {}
        self._kept: dict[str, Kept] = {}
        self._sending_kept = False
        self._send_kept_again = False
        self._control_consumer: str | None = None
        self._broadcasts: str | None = None  # this server's exclusive broadcast queue
        # One broadcast queue and one suspects consumer, even with registrations racing; and
        # each consumer made with its own prefetch on the shared channel.
        self._calls_consumers = asyncio.Lock()
        self._suspects = Intake(SUSPECTS)
        self._suspects_consumer: str | None = None
        self._registered = asyncio.Event()  # set, and replaced, at each registration
        self._event_batch: list[Event] = []
        self._event_flush: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._replies: Coalescer[tuple[aiormq.abc.AbstractChannel, str], Reply] = Coalescer(
            self._publish_replies,
            count=REPLY_BATCH,
            size=min(wire.BATCH_BYTES, link.max_message_size),
            measure=wire.entry_size,
        )
        link.on_open.append(self._on_open)
        link.on_lost.append(self._on_lost)

    # --- consumers and capacity ----------------------------------------------------------

    async def _on_open(self, channels: Channels) -> None:
        if self._kept:
            self._spawn(self._send_kept())  # once the connection counts as ready
        if not self.handlers:
            return
        await declare_all(channels.connection, self.topology, list(self.handlers))
        await self._consume_control(channels)
        async with self._calls_consumers:
            await self._consume_broadcasts(channels)
            await self._consume_suspects(channels)
        for intake in self._intakes.values():
            await self._fit(channels.serve_raw, intake)

    def _on_lost(self) -> None:
        self._control_consumer = None
        self._broadcasts = None
        self._suspects_consumer = None
        self._suspects.reset()
        for intake in self._intakes.values():
            intake.reset()
        if is_consumer_timeout(self.link.lost_because):
            now = time.monotonic()
            held = [now - d.received for d in self._held.values() if not d.settled]
            self._leases.learn_timeout(max(held, default=0.0))

    async def _consume_control(self, channels: Channels) -> None:
        queue = await channels.calls.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(self.topology.control_exchange)
        ok = await channels.calls_raw.basic_consume(queue.name, self._on_control, no_ack=True)
        self._control_consumer = ok.consumer_tag
        self._frames.credit_to = queue.name  # streams' credits come here too

    async def _consume_broadcasts(self, channels: Channels) -> None:
        """An exclusive queue of this server's own, bound to the broadcast exchange under every
        atask name it serves: gone with the connection, so a server that is down misses
        broadcasts (RabbitMQ 4.3 refuses transient queues that are not exclusive)."""
        queue = await channels.calls.declare_queue(exclusive=True, auto_delete=True)
        for name in self.handlers:
            await queue.bind(self.topology.broadcast_exchange, routing_key=name)
        limit = self._capacity.limit if self._capacity is not None else UNBOUNDED_PREFETCH
        # On the calls channel, whose other consumers exist already (a prefetch applies to the
        # consumers made after it): each copy waits for a slot in the router, not in the broker.
        await channels.calls_raw.basic_qos(prefetch_count=limit, global_=False)
        await channels.calls_raw.basic_consume(queue.name, self._on_broadcast)
        self._broadcasts = queue.name

    async def _consume_suspects(self, channels: Channels) -> None:
        """The suspects queue, one request at a time (see ``_verdict``)."""
        await channels.calls_raw.basic_qos(prefetch_count=1, global_=False)
        ok = await channels.calls_raw.basic_consume(
            self.topology.suspects_queue, self._on_request(self._suspects)
        )
        self._suspects_consumer = ok.consumer_tag

    async def _bind_broadcasts(self, channels: Channels, name: str, *, bind: bool) -> None:
        queue = self._broadcasts
        if queue is None:
            return
        if bind:
            await channels.calls_raw.queue_bind(
                queue, self.topology.broadcast_exchange, routing_key=name
            )
        else:
            await channels.calls_raw.queue_unbind(
                queue, self.topology.broadcast_exchange, routing_key=name
            )

    async def register(self, name: str, handler: RequestHandler) -> None:
        channels = await self.link.ready()
        await declare_all(channels.connection, self.topology, [name])
        if self._control_consumer is None:
            await self._consume_control(channels)
        self.handlers[name] = handler
        self._registered.set()
        self._registered = asyncio.Event()
        async with self._calls_consumers:
            if self._broadcasts is None:
                await self._consume_broadcasts(channels)
            else:
                await self._bind_broadcasts(channels, name, bind=True)
            if self._suspects_consumer is None:
                await self._consume_suspects(channels)
        self._intakes.setdefault(name, Intake(name))
        self.rebalance()
        await self._settled()

    async def unregister(self, name: str) -> None:
        self.handlers.pop(name, None)
        intake = self._intakes.pop(name, None)
        channels = self.link.channels
        if intake is None or channels is None:
            return
        try:
            async with asyncio.timeout(UNREGISTER_WITHIN):  # the broker may not answer
                await self._bind_broadcasts(channels, name, bind=False)
        except (*CONNECTION_ERRORS, TimeoutError) as exc:
            log.debug("could not unbind broadcasts of %s: %s", name, describe(exc))
        for tag in [*intake.stale, *([intake.tag] if intake.tag else [])]:
            await _cancel_consumer(channels.serve_raw, tag, name)
        if not self.handlers and self._suspects_consumer is not None:
            tag, self._suspects_consumer = self._suspects_consumer, None
            await _cancel_consumer(channels.calls_raw, tag, SUSPECTS)

    def set_capacity(self, capacity: Capacity) -> None:
        self._capacity = capacity
        capacity.subscribe(self._poke)

    def _poke(self) -> None:
        # Slots change inside a handler, before it returns its reply and counts its delivery
        # handled: look once that has happened, and once per turn of the loop.
        if not self._poked:
            self._poked = True
            asyncio.get_running_loop().call_soon(self._poked_rebalance)

    def _poked_rebalance(self) -> None:
        self._poked = False
        self.rebalance()

    def rebalance(self) -> None:
        """Bring every queue's consumer in line with the free slots, in the background; one
        pass at a time, always converging on the latest state."""
        if self._rebalancing is not None and not self._rebalancing.done():
            self._rebalance_again = True
            return
        if not self._intakes or not self.link.is_ready:
            return
        if not any(intake.stale or intake.plan(self._free()) for intake in self._intakes.values()):
            return
        self._rebalancing = asyncio.get_running_loop().create_task(self._rebalance())

    async def _settled(self) -> None:
        while self._rebalancing is not None and not self._rebalancing.done():
            await asyncio.shield(self._rebalancing)

    def _free(self) -> int:
        return self._capacity.free if self._capacity is not None else UNBOUNDED_PREFETCH

    async def _rebalance(self) -> None:
        self._rebalance_again = True
        while self._rebalance_again:
            self._rebalance_again = False
            channels = self.link.channels
            if channels is None:
                return
            try:
                for intake in list(self._intakes.values()):
                    await self._fit(channels.serve_raw, intake)
            except CONNECTION_ERRORS as exc:  # the connection is going: reopening redoes this
                log.debug("could not adjust consumers: %s", describe(exc))
                return

    async def _fit(self, channel: aiormq.abc.AbstractChannel, intake: Intake) -> None:
        prefetch = intake.plan(self._free())
        if prefetch is not None and intake.name in self.handlers:
            # Per-consumer prefetch: applies to the consumers created after it on this channel.
            await channel.basic_qos(prefetch_count=prefetch, global_=False)
            ok = await channel.basic_consume(
                self.topology.request_queue(intake.name), self._on_request(intake)
            )
            assert ok.consumer_tag is not None
            intake.replaced(ok.consumer_tag, prefetch)
        while intake.stale:
            await channel.basic_cancel(intake.stale.pop())

    # --- serving -------------------------------------------------------------------------

    def _on_request(
        self, intake: Intake
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_request(delivered: DeliveredMessage) -> None:
            # The call gets a task of its own, not aiormq's: a lost connection ends aiormq's
            # tasks, and a call should finish and keep its reply for the next connection.
            message = Delivery(delivered)
            if message.consumer_tag is not None:
                intake.delivered(message.consumer_tag)
                message.counted = True
            # A context of its own: nothing set where the connection was opened leaks into it.
            serve = self._serve_batch if message.is_batch else self._serve
            task = asyncio.get_running_loop().create_task(
                serve(intake, message), context=contextvars.Context()
            )
            key = message.correlation_id or f"?{id(task)}"
            self._running[key] = task
            self._held[id(message)] = message

            def forget(done: asyncio.Task[None]) -> None:
                _handled(intake, message)
                del self._held[id(message)]
                if self._running.get(key) is done:  # a requeued copy may have taken the key
                    del self._running[key]

            task.add_done_callback(forget)

        return on_request

    async def _serve(self, intake: Intake, message: Delivery) -> None:
        isolated = intake is self._suspects
        name = _suspect_of(message) if isolated else intake.name
        call_id = message.correlation_id
        replied = False
        try:
            if not call_id or not name:
                missing = f"header {wire.H_SUSPECT_OF}" if call_id else "correlation_id"
                log.warning("dead-lettered a request for %r without %s", name, missing)
                await self._dead_letter(
                    name,
                    message,
                    "rejected",
                    "atasks.errors.DecodeError",
                    f"the request has no {missing}",
                )
                return
            requeueing = self._requeueing.get(call_id)
            if requeueing is not None:  # our copy overtook the ack of its original
                await requeueing.wait()
            if call_id in self._cancelled:
                log.debug("dropped request %s: cancelled before it ran", call_id)
                if message.reply_to:
                    failure = Reply.failure(call_id, TransportError("cancelled by its caller"))
                    await self._reply_and_ack(message, failure)
                else:
                    await message.ack()
                return
            if wire.H_LEASE_HOLDER in message.headers and await self._leases.still_held(
                message.properties
            ):  # an expired lease of a call its holder still runs, or has run
                await message.ack()
                return
            if wire.window_from(message.headers) and _delivered_before(message):
                # A stream is at most once per item: its caller has some of its items already.
                interrupted = StreamInterrupted(
                    "the server that ran it was lost, and a stream is not restarted"
                )
                await self._finish(name, message, Reply.failure(call_id, interrupted))
                return
            known = await self._known_outcome(name, message, call_id)
            if known is not None:  # run here already, its first delivery lost with a connection
                await self._finish(name, message, known)
                return
            verdict, deaths = self._verdict(message, isolated=isolated)
            if verdict is not Verdict.RUN:
                await self._after_deaths(name, message, verdict, deaths)
                return
            handler = self.handlers.get(name)
            if handler is None and isolated:
                handler = await self._handler_within(name, SUSPECT_HANDLER_WAIT)
            if handler is None:  # delivered while this server stopped serving it
                # A suspect too goes to its atask's queue, where a server that serves it runs it.
                headers = {**message.headers, wire.H_UNISOLATED: 1} if isolated else message.headers
                await self._requeue(name, message, headers)
                return
            request = self._request_from(name, message)
            if isinstance(request, Reply):
                await self._finish(name, message, request)
                return
            capacity = self._capacity
            if capacity is not None:
                if capacity.try_take():
                    request.slot_taken = True
                elif not (isolated or message.redelivered):  # these wait for a slot here
                    await self._give_back(intake, message)
                    return
            try:
                with self._leases.holding(name, message):
                    reply = await self._run(name, request, handler)
            finally:
                _handled(intake, message)  # before the reply's round trip: credit is back
            replied = True
            await self._send_reply(name, message, reply)
        except asyncio.CancelledError:
            await self._after_cancel(name, call_id, message, replied=replied)
        except CONNECTION_ERRORS as exc:
            log.warning("request %s of %r not finished: %s", call_id, name, describe(exc))
            with contextlib.suppress(*CONNECTION_ERRORS):  # on a live channel, try again
                await message.nack(requeue=True)

    async def _handler_within(self, name: str, seconds: float) -> RequestHandler | None:
        """The handler of ``name`` once registered, if within ``seconds``: a server takes
        suspects once it serves one atask, and registers the others one by one."""
        try:
            async with asyncio.timeout(seconds):
                while (handler := self.handlers.get(name)) is None:
                    await self._registered.wait()
        except TimeoutError:
            return None
        return handler

    async def _run(self, name: str, request: Request, handler: RequestHandler) -> Reply:
        """Run one call: its reply, once every frame it sent is out."""
        call_id = request.call_id
        inflight: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._inflight[call_id] = inflight
        try:
            try:
                reply = await handler(request)
            except Exception as exc:  # a handler breaking its contract: still answer
                log.exception("the handler of %r failed on request %s", name, call_id)
                reply = Reply.failure(call_id, exc)
            await self._frames.sent(call_id)  # the outcome comes after every frame
            inflight.set_result(reply)
        finally:
            self._frames.forget(call_id)
            inflight.cancel()  # no-op once it has the reply
            del self._inflight[call_id]
        return reply

    async def _serve_batch(self, intake: Intake, message: Delivery) -> None:
        """Serve a batch: each call as if it had come alone, in a task of its own. The message
        is acked once every call is answered (its reply confirmed) or handed back to the queue in
        a new message: calls with no free slot at once (as a lone request would be), and those
        a stopping server had not finished."""
        name = intake.name
        held: dict[str, asyncio.Event] = {}  # calls queued alone, waiting for this ack
        try:
            requeueing = self._requeueing.get(message.correlation_id or "")
            if requeueing is not None:  # our copy overtook the ack of its original
                await requeueing.wait()
            if wire.H_LEASE_HOLDER in message.headers and await self._leases.still_held(
                message.properties
            ):
                await message.ack()
                return
            try:
                if intake is self._suspects:
                    name = _suspect_of(message)
                    raise ValueError("a batch in the suspects queue, where each call goes alone")
                if not message.reply_to or not message.correlation_id:
                    raise ValueError("a batch without reply_to or correlation_id")
                requests = wire.batch_from(name, message.properties, message.body)
            except ValueError as exc:
                log.warning("dead-lettered a malformed batch for %r: %s", name, exc)
                await self._dead_letter(
                    name, message, "rejected", "atasks.errors.DecodeError", str(exc)
                )
                return
            handler = self.handlers.get(name)
            if handler is None:  # delivered while this server stopped serving it
                await self._requeue(name, message, message.headers)
                return
            answered: dict[str, Reply] = {}  # calls answered without running
            size, limit = len(message.body), self.link.max_message_size
            for request in requests:
                if size > limit:
                    answered[request.call_id] = Reply.failure(
                        request.call_id,
                        TransportError(
                            f"a batch of {size} bytes is over this server's {limit}-byte limit"
                        ),
                    )
                elif request.call_id in self._cancelled:
                    answered[request.call_id] = Reply.failure(
                        request.call_id, TransportError("cancelled by its caller")
                    )
            # Not answered, not kept, not running here: these run (or go back to the queue).
            fresh = [
                r
                for r in requests
                if r.call_id not in answered
                and r.call_id not in self._kept
                and r.call_id not in self._inflight
            ]
            runs: list[Request] = []
            if fresh:
                verdict, deaths = self._verdict(message, isolated=False)
                if verdict is Verdict.RUN:
                    runs = await self._take_slots(intake, message, fresh)
                else:
                    held = await self._after_deaths(name, message, verdict, deaths, fresh)
            elsewhere = {r.call_id for r in fresh} - {r.call_id for r in runs}
            with self._leases.holding(name, message):
                entries = {
                    r.call_id: (r, self._start_entry(name, message, r, handler, answered))
                    for r in requests
                    if r.call_id not in elsewhere
                }
                outcomes = await self._finished(entries)
            _handled(intake, message)
            unfinished = [
                r
                for r in requests
                if r.call_id in outcomes and outcomes[r.call_id][0] is Outcome.BACK
            ]
            if unfinished:
                await self._publish_copy(name, message, message.headers, unfinished)
            if all(outcome is not Outcome.KEPT for outcome, _ in outcomes.values()):
                await message.ack()
                for call_id in outcomes:  # answered for good: forget their replies
                    kept = self._kept.get(call_id)
                    if kept is not None and kept.sent:
                        del self._kept[call_id]
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
            self._release(held)

    def _verdict(self, message: Delivery, *, isolated: bool) -> tuple[Verdict, int]:
        """What to do with a delivery given the servers that died holding it (with their count,
        this delivery included). Redelivered, or back from an expired lease, means its last
        server died, was killed or lost its connection while holding it."""
        headers = message.headers
        died = message.redelivered or wire.H_LEASE_HOLDER in headers
        deaths = wire.deaths_now(headers, died=died)
        limit = self.topology.delivery_limit
        if deaths >= limit:
            return Verdict.DEAD, deaths
        if isolated:  # a suspect that took its server down goes back in line, counted
            return (Verdict.ISOLATE if deaths > wire.deaths(headers) else Verdict.RUN), deaths
        if (
            deaths >= max(1, min(ISOLATE_AFTER, limit - 1))
            and wire.H_UNISOLATED not in headers
            and self._counts_only_deaths()
        ):
            return Verdict.ISOLATE, deaths
        if died and self.topology.queue_type == "classic":
            return Verdict.COUNT, deaths
        return Verdict.RUN, deaths

    def _counts_only_deaths(self) -> bool:
        """Whether a request's count of deliveries counts only its servers' deaths. Not on
        RabbitMQ 3.x quorum queues: they also count a delivery on its way to a consumer that
        was cancelled, as servers' consumers are whenever their free slots change. There,
        requests are not isolated (a fan-out would deadlock on suspects that are not)."""
        major = self.link.broker_major
        return self.topology.queue_type == "classic" or major is None or major >= 4

    async def _after_deaths(
        self,
        name: str,
        message: Delivery,
        verdict: Verdict,
        deaths: int,
        requests: list[Request] | None = None,
    ) -> dict[str, asyncio.Event]:
        """Carry out ``verdict`` on ``message``, or on ``requests`` (calls of a batch, which is
        left to settle). Copies of a batch or of its calls reaching this server wait for the
        batch's ack (see ``_requeue``): the events returned are set then."""
        if verdict is Verdict.DEAD:
            log.error(
                "request %s for %r: %d servers died holding it; dead-lettered",
                message.correlation_id,
                name,
                deaths,
            )
            await self._dead_letter(
                name,
                message,
                "delivery_limit",
                "atasks.errors.DeliveryLimitExceeded",
                died_running(deaths),
                requests,
            )
        elif verdict is Verdict.COUNT:
            headers = {**message.headers, wire.H_DELIVERIES: deaths}
            if requests is None:
                await self._requeue(name, message, headers)
            else:  # the copy, should it reach this server, waits for this batch's ack
                batch_id = new_batch_id()
                return await self._holding(
                    [batch_id],
                    self._publish_copy(name, message, headers, requests, batch_id=batch_id),
                )
        elif requests is None:
            log.info(
                "request %s for %r: %d servers died holding it; it runs alone from now on",
                message.correlation_id,
                name,
                deaths,
            )
            headers = {
                **_without(message.headers, wire.H_LEASE_HOLDER, wire.H_UNISOLATED),
                wire.H_DELIVERIES: deaths,
                wire.H_SUSPECT_OF: name,
            }
            await self._requeue(name, message, headers, self.topology.suspects_queue)
        else:
            return await self._isolate_calls(name, message, requests, deaths)
        return {}

    async def _isolate_calls(
        self, name: str, message: Delivery, requests: list[Request], deaths: int
    ) -> dict[str, asyncio.Event]:
        """Queue each of ``requests``, calls of a batch whose servers died holding it, alone in
        the suspects queue (confirmed)."""
        assert message.reply_to is not None
        persistent = message.properties.delivery_mode == wire.PERSISTENT
        log.info(
            "%d calls of a batch of %r: %d servers died holding them; they run alone from now on",
            len(requests),
            name,
            deaths,
        )
        copies = []
        for request in requests:
            properties = wire.request_properties(request, message.reply_to, persistent=persistent)
            properties.headers = {
                **(properties.headers or {}),
                wire.H_DELIVERIES: deaths,
                wire.H_SUSPECT_OF: name,
            }
            copies.append(
                message.channel.basic_publish(
                    request.body, routing_key=self.topology.suspects_queue, properties=properties
                )
            )
        return await self._holding([r.call_id for r in requests], asyncio.gather(*copies))

    async def _holding(
        self, keys: list[str], publishing: Awaitable[object]
    ) -> dict[str, asyncio.Event]:
        """Await ``publishing`` (copies of a message being settled); until the events returned
        are set (see ``_release``), a copy of ``keys`` reaching this server waits, as with
        ``_requeue``. Released at once should publishing fail."""
        held = {key: asyncio.Event() for key in keys}
        self._requeueing.update(held)
        try:
            await publishing
        except BaseException:
            self._release(held)
            raise
        return held

    def _release(self, held: Mapping[str, asyncio.Event]) -> None:
        """Let copies of these calls run: their original is acked, or will never be."""
        for call_id, done in held.items():
            done.set()
            if self._requeueing.get(call_id) is done:
                del self._requeueing[call_id]

    async def _take_slots(
        self, intake: Intake, message: Delivery, requests: list[Request]
    ) -> list[Request]:
        """The calls of a batch that run here: those that got a free slot (and, in a delivery
        that may have killed a server, the others too, to wait for one here); the rest go back
        to the queue for another server at once, as a lone request would."""
        capacity = self._capacity
        if capacity is None:
            return requests
        runs: list[Request] = []
        back: list[Request] = []
        for request in requests:
            if capacity.try_take():
                request.slot_taken = True
                runs.append(request)
            elif message.redelivered:
                runs.append(request)
            else:
                back.append(request)
        if back:
            if intake.tag is not None and intake.tag == message.consumer_tag:
                intake.pause()
                self.rebalance()  # cancels the consumer
            log.debug("no free slot for %d calls of %r: handed back", len(back), intake.name)
            try:
                await self._publish_copy(intake.name, message, message.headers, back)
            except BaseException:
                for request in runs:
                    if request.slot_taken:
                        request.slot_taken = False
                        capacity.give_back_untaken()
                raise
        return runs

    def _start_entry(
        self,
        name: str,
        message: Delivery,
        request: Request,
        handler: RequestHandler,
        answered: Mapping[str, Reply],
    ) -> asyncio.Task[tuple[Outcome, Reply | None]]:
        call_id = request.call_id
        task = asyncio.get_running_loop().create_task(
            self._serve_entry(name, message, request, handler, answered.get(call_id)),
            context=contextvars.Context(),
        )
        self._running[call_id] = task

        def forget(done: asyncio.Task[tuple[Outcome, Reply | None]]) -> None:
            if self._running.get(call_id) is done:
                del self._running[call_id]

        task.add_done_callback(forget)
        return task

    async def _serve_entry(
        self,
        name: str,
        message: Delivery,
        request: Request,
        handler: RequestHandler,
        answer: Reply | None,
    ) -> tuple[Outcome, Reply | None]:
        """One call of a batch, from start to its reply's confirmation."""
        call_id = request.call_id
        try:
            reply = answer
            if reply is None and not request.slot_taken:
                reply = await self._known_outcome(name, message, call_id, hold=False)
            if reply is None:
                assert message.reply_to is not None
                self._frames.attach(request, message.reply_to)
                reply = await self._run(name, request, handler)
        except asyncio.CancelledError:  # by its caller (done), or this server stops
            return _cancelled_outcome(call_id in self._cancelled)
        return await self._reply_to_entry(message, reply), reply

    async def _finished(
        self, entries: Mapping[str, tuple[Request, asyncio.Task[tuple[Outcome, Reply | None]]]]
    ) -> dict[str, tuple[Outcome, Reply | None]]:
        """How each call of a batch ended, once all have. Should the server stop meanwhile
        (this task is cancelled), so do they."""
        tasks = {task for _, task in entries.values()}
        if tasks:
            try:
                await asyncio.wait(tasks)
            except asyncio.CancelledError:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(tasks)
                current = asyncio.current_task()
                if current is not None:
                    current.uncancel()  # what it was told to do, it does: settle the batch
        outcomes: dict[str, tuple[Outcome, Reply | None]] = {}
        for call_id, (request, task) in entries.items():
            if not task.cancelled():
                outcomes[call_id] = task.result()
                continue
            # Cancelled before it started: its slot was never adopted.
            if request.slot_taken and self._capacity is not None:
                request.slot_taken = False
                self._capacity.give_back_untaken()
            outcomes[call_id] = _cancelled_outcome(call_id in self._cancelled)
        return outcomes

    async def _reply_to_entry(self, message: Delivery, reply: Reply) -> Outcome:
        """Send one reply of a batch (with the others ready for the same caller)."""
        assert message.reply_to is not None
        try:
            await self._replies.put((message.channel, message.reply_to), _fitting(reply, self.link))
        except aiormq.exceptions.DeliveryError as exc:
            log.warning(
                "the broker refused the reply to %s (%s): handed back", reply.call_id, describe(exc)
            )
            return Outcome.BACK
        except CONNECTION_ERRORS as exc:
            log.info(
                "kept the reply to %s until the broker is back (%s)", reply.call_id, describe(exc)
            )
            self._keep(Kept(message.reply_to, reply))
            if self.link.is_ready:
                await self._send_kept()
            return Outcome.KEPT
        # Kept until the batch is acked: should its delivery be lost with the connection, the
        # call is answered from here when it comes again, not run again.
        self._keep(Kept(message.reply_to, reply, sent=True))
        return Outcome.ANSWERED

    async def _publish_replies(
        self, destination: tuple[aiormq.abc.AbstractChannel, str], replies: list[Reply]
    ) -> None:
        channel, reply_to = destination
        if len(replies) == 1:
            body, properties = replies[0].body, wire.reply_properties(replies[0])
        else:
            body, properties = wire.pack_replies(replies), wire.replies_properties()
            if len(body) > self.link.max_message_size:  # too much together: one each
                for reply in replies:
                    await self._publish_replies(destination, [reply])
                return
        await channel.basic_publish(body, routing_key=reply_to, properties=properties)

    def _request_from(self, name: str, message: Delivery) -> Request | Reply:
        call_id = message.correlation_id or ""
        size, limit = len(message.body), self.link.max_message_size
        if size > limit:
            log.warning(
                "refused request %s for %r: %d bytes over the %d-byte limit",
                call_id,
                name,
                size,
                limit,
            )
            return Reply.failure(
                call_id,
                TransportError(f"request of {size} bytes is over this server's {limit}-byte limit"),
            )
        request = wire.request_from(name, message.properties, message.body)
        if message.reply_to:
            self._frames.attach(request, message.reply_to)
        return request

    async def _known_outcome(
        self, name: str, message: Delivery, call_id: str, *, hold: bool = True
    ) -> Reply | None:
        """The reply of a call this server ran, or is running, for an earlier delivery; with
        ``hold``, leasing ``message`` should the wait be long."""
        kept = self._kept.get(call_id)
        if kept is not None:
            return kept.reply
        inflight = self._inflight.get(call_id)
        if inflight is None:
            return None
        try:
            with self._leases.holding(name, message) if hold else contextlib.nullcontext():
                return await asyncio.shield(inflight)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None  # that run was cancelled: this delivery runs it afresh

    async def _on_broadcast(self, delivered: DeliveredMessage) -> None:
        message = Delivery(delivered)
        name = str(getattr(delivered.delivery, "routing_key", "") or "")
        key = f"broadcast:{id(message)}"  # not its call id: a cancellation is not for copies
        task = asyncio.get_running_loop().create_task(
            self._serve_copy(name, message), context=contextvars.Context()
        )
        self._running[key] = task
        self._held[id(message)] = message

        def forget(done: asyncio.Task[None]) -> None:
            del self._held[id(message)]
            if self._running.get(key) is done:
                del self._running[key]

        task.add_done_callback(forget)

    async def _serve_copy(self, name: str, message: Delivery) -> None:
        """This server's copy of a broadcast: run it (waiting for a slot in the router, never
        handed to another server), then ack; a failed one is dead-lettered."""
        try:
            handler = self.handlers.get(name)
            if handler is None:  # unbound meanwhile
                await message.ack()
                return
            if not message.correlation_id:
                await self._dead_letter(
                    name,
                    message,
                    "rejected",
                    "atasks.errors.DecodeError",
                    "the broadcast has no correlation_id (its call id)",
                )
                return
            request = self._request_from(name, message)
            if not isinstance(request, Reply):
                try:
                    request = await handler(request)
                except Exception as exc:  # a handler breaking its contract
                    log.exception("the handler of %r failed on a broadcast", name)
                    request = Reply.failure(message.correlation_id, exc)
            await self._finish(name, message, request)
        except asyncio.CancelledError:  # this server stops: its copy goes with its queue
            with contextlib.suppress(*CONNECTION_ERRORS):
                await message.nack(requeue=True)
        except CONNECTION_ERRORS as exc:
            log.warning("broadcast %s of %r not finished: %s", message.correlation_id, name, exc)

    async def _finish(self, name: str, message: Delivery, reply: Reply) -> None:
        """Settle a delivery with its outcome: reply and ack a call; ack a fire-and-forget or
        broadcast request that succeeded, dead-letter one that failed."""
        if message.reply_to:
            await self._reply_and_ack(message, reply)
        elif reply.ok:
            await message.ack()
        else:
            reason = dead_reason(reply)
            log.error(
                "fire-and-forget call %s of %r %s: %s: %s; dead-lettered",
                reply.call_id,
                name,
                reason,
                reply.error_type,
                reply.error_message,
            )
            try:
                await self._dead_letter(
                    name, message, reason, reply.error_type, reply.error_message
                )
            except aiormq.exceptions.DeliveryError as exc:  # kept: it runs again
                log.warning("the broker refused the dead letter of %s: %s", reply.call_id, exc)
                await message.nack(requeue=True)

    async def _send_reply(self, name: str, message: Delivery, reply: Reply) -> None:
        """Reply and ack; with the connection gone, keep the reply to send once reconnected
        (the broker delivers the request again, and the kept reply answers it)."""
        reply = _fitting(reply, self.link)
        if not message.reply_to:
            try:
                await self._finish(name, message, reply)
            except CONNECTION_ERRORS as exc:  # redelivered: answered from what is kept
                log.info("kept the outcome of %s for its redelivery (%s)", reply.call_id, exc)
                self._keep(Kept("", reply, sent=True))
            return
        try:
            await self._reply_and_ack(message, reply)
        except CONNECTION_ERRORS as exc:
            assert message.reply_to is not None
            log.info(
                "kept the reply to %s until the broker is back (%s)", reply.call_id, describe(exc)
            )
            self._keep(Kept(message.reply_to, reply))
            if self.link.is_ready:  # back already: the old channel had simply gone
                await self._send_kept()

    def _keep(self, kept: Kept) -> None:
        now = time.monotonic()
        self._kept[kept.reply.call_id] = kept
        while self._kept:  # forget the oldest
            oldest = next(iter(self._kept.values()))
            if len(self._kept) <= KEPT_MAX and now - oldest.at < KEPT_FOR:
                break
            del self._kept[oldest.reply.call_id]

    async def _send_kept(self) -> None:
        """Send every kept reply not sent yet, once each: one pass at a time, and another pass
        if more were kept meanwhile."""
        if self._sending_kept:
            self._send_kept_again = True
            return
        self._sending_kept = True
        try:
            self._send_kept_again = True
            while self._send_kept_again:
                self._send_kept_again = False
                channels = self.link.channels
                if channels is None:
                    return
                for kept in [kept for kept in self._kept.values() if not kept.sent]:
                    try:
                        await channels.serve_raw.basic_publish(
                            kept.reply.body,
                            routing_key=kept.reply_to,
                            properties=wire.reply_properties(kept.reply),
                        )
                    except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
                        log.debug("could not send kept replies yet: %s", describe(exc))
                        return  # the next connection tries again
                    kept.sent = True
        finally:
            self._sending_kept = False

    async def _reply_and_ack(self, message: Delivery, reply: Reply) -> None:
        assert message.reply_to is not None
        try:
            await self._replies.put((message.channel, message.reply_to), reply)
        except aiormq.exceptions.DeliveryError as exc:
            # The broker refused the reply: run the request again rather than leave its caller
            # waiting (it counts towards the delivery limit).
            log.warning(
                "the broker refused the reply to %s (%s): requeued", reply.call_id, describe(exc)
            )
            await message.nack(requeue=True)
            return
        await message.ack()

    async def _give_back(self, intake: Intake, message: Delivery) -> None:
        """No slot is free: return the request to its queue for another server, and take no
        more from that queue until a slot frees."""
        if intake.tag is not None and intake.tag == message.consumer_tag:
            intake.pause()
            self.rebalance()  # cancels the consumer
        log.debug(
            "no free slot for request %s of %r: handed back", message.correlation_id, intake.name
        )
        await self._requeue(intake.name, message, message.headers)

    async def _dead_letter(
        self,
        name: str,
        message: Delivery,
        reason: str,
        error_type: str,
        error_message: str,
        requests: list[Request] | None = None,
    ) -> None:
        """Publish ``message`` to the dead letters with why and its last error (confirmed), then
        ack it: at least once, on either queue type. With ``requests`` (some calls of a batch),
        only those, in a batch of their own, and ``message`` is left for its other calls."""
        body, properties = _part(message, requests)
        headers = wire.dead_letter_headers(
            properties.headers or {}, reason, error_type, error_message
        )
        if self.events:
            parent = message.headers.get(wire.H_PARENT)
            self.publish_event(
                Event(
                    kind="dead",
                    atask=name,
                    call_id=properties.correlation_id or "",
                    parent_id=parent if isinstance(parent, str) else None,
                    namespace=self.topology.namespace,
                    error=f"{reason}: {error_type}: {error_message}",
                )
            )
        await message.channel.basic_publish(
            body,
            exchange=self.topology.dead_letter_exchange,
            routing_key=self.topology.request_queue(name) if name else self.topology.suspects_queue,
            properties=Basic.Properties(
                headers=headers,
                content_type=properties.content_type,
                delivery_mode=wire.PERSISTENT,
                correlation_id=properties.correlation_id,
                reply_to=properties.reply_to,
                priority=properties.priority,
                message_type=properties.message_type,
            ),
        )
        if requests is None:
            await message.ack()

    async def _requeue(
        self,
        name: str,
        message: Delivery,
        headers: Mapping[str, Any],
        queue: str | None = None,
    ) -> None:
        """Queue a fresh copy of ``message`` (confirmed) in its atask's queue or in ``queue``,
        then ack the original: handing a request back this way does not count as a delivery
        that failed.

        Until the broker has processed the ack, a copy reaching this server waits: run at once, a
        request that kills its server would take the unacked original down too, doubling it. An
        ack merely written is not enough: a process killed with unread data on its socket resets
        the connection, and what it sent last may never be read.
        """
        call_id = message.correlation_id or ""
        self._requeueing[call_id] = done = asyncio.Event()
        try:
            await self._publish_copy(name, message, headers, queue=queue)
            await message.ack()
            # A round trip on the same channel: the broker answers it after the ack.
            await message.channel.exchange_declare("amq.direct", passive=True)
        finally:
            self._release({call_id: done})

    async def _publish_copy(
        self,
        name: str,
        message: Delivery,
        headers: Mapping[str, Any],
        requests: list[Request] | None = None,
        *,
        queue: str | None = None,
        batch_id: str | None = None,
    ) -> None:
        """Queue a fresh copy of ``message`` with ``headers`` (confirmed) in its atask's queue or
        in ``queue``; with ``requests``, a batch of just those calls of it (``batch_id``)."""
        body, properties = _part(message, requests, batch_id)
        expires = (
            properties.expiration
            if requests is not None
            else wire.expiration(wire.deadline_from(headers))
        )
        kept = {k: v for k, v in headers.items() if not k.startswith("x-")}
        if requests is not None:  # a batch of its own: only what says how often it died
            kept = {**(properties.headers or {}), **_only(kept, wire.H_DELIVERIES)}
        copy = Basic.Properties(
            headers=kept or None,
            content_type=properties.content_type,
            delivery_mode=message.properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=expires,
            priority=properties.priority,  # back among the requests of its priority
            message_type=properties.message_type,
        )
        await message.channel.basic_publish(
            body, routing_key=queue or self.topology.request_queue(name), properties=copy
        )

    async def _after_cancel(
        self, name: str, call_id: str | None, message: Delivery, *, replied: bool
    ) -> None:
        if message.settled:  # cancelled while acking: nothing left to do
            return
        try:
            if replied or (call_id is not None and call_id in self._cancelled):
                await message.ack()  # answered, or cancelled by its caller: done with it
                return
            if call_id and message.reply_to and wire.window_from(message.headers):
                # A stream is not restarted elsewhere: its caller may have some of its items.
                stopped = StreamInterrupted("the server that ran it stopped, mid-stream")
                await self._reply_and_ack(message, Reply.failure(call_id, stopped))
                return
            # This server is shutting down: hand the request to another server.
            try:
                await self._requeue(name, message, message.headers)
            except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError):
                await message.nack(requeue=True)
        except CONNECTION_ERRORS:
            pass

    async def drain(self, grace: float) -> None:
        self._leases.stop()  # what is leased, the lease queue keeps
        running = set(self._running.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running.values()))

    # --- control: cancellations and inspect ----------------------------------------------

    async def _on_control(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        call_id = properties.correlation_id
        if properties.message_type == "inspect" and properties.reply_to:
            await self._answer_inspect(properties.reply_to, call_id)
        elif properties.message_type == LEASE and properties.reply_to:
            if self._leases.answers(properties.headers or {}):
                await self._answer(properties.reply_to, call_id, b"held")
        elif properties.message_type == wire.CREDIT and call_id:
            self._frames.granted(call_id, wire.credits_from(properties))
        elif properties.message_type == "cancel" and call_id:
            self._remember_cancelled(call_id)
            task = self._running.get(call_id)
            if task is not None:
                log.debug("cancelling call %s at its caller's request", call_id)
                task.cancel()

    async def _answer(self, reply_to: str, correlation_id: str | None, body: bytes) -> None:
        channels = self.link.channels
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
        channels = self.link.channels
        if statistics is None or channels is None:
            return
        host, _, pid = SERVER_ID.rpartition(":")
        answer = {
            **statistics,
            "server": SERVER_ID,
            "host": host,
            "pid": int(pid),
            "uptime": time.time() - self.started,
            "events": self.link.events,
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

    def _remember_cancelled(self, call_id: str) -> None:
        now = time.monotonic()
        self._cancelled[call_id] = now
        while self._cancelled:  # forget the oldest
            oldest, at = next(iter(self._cancelled.items()))
            if len(self._cancelled) <= CANCELLED_KEPT and now - at < CANCELLED_FOR:
                break
            del self._cancelled[oldest]

    # --- events --------------------------------------------------------------------------

    def publish_event(self, event: Event) -> None:
        # Batched: one message per EVENTS_FLUSH seconds, not one per event, so that events cost
        # servers and broker a fraction of what the calls themselves cost.
        self._event_batch.append(event)
        if self._event_flush is None:
            self._event_flush = asyncio.get_running_loop().call_later(
                EVENTS_FLUSH, self._spawn_flush
            )

    def _spawn_flush(self) -> None:
        self._spawn(self.flush_events())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def flush_events(self) -> None:
        if self._event_flush is not None:
            self._event_flush.cancel()
        self._event_flush = None
        batch, self._event_batch = self._event_batch, []
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


def _cancelled_outcome(by_caller: bool) -> tuple[Outcome, None]:
    """A call of a batch that was cancelled: by its caller (nothing to answer), or because its
    server stops (to hand back)."""
    return (Outcome.ANSWERED if by_caller else Outcome.BACK), None


def _fitting(reply: Reply, link: Link) -> Reply:
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


def _part(
    message: Delivery, requests: list[Request] | None, batch_id: str | None = None
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


async def _cancel_consumer(channel: aiormq.abc.AbstractChannel, tag: str, queue: str) -> None:
    """Stop a consumer, as far as the broker answers within ``UNREGISTER_WITHIN``."""
    try:
        async with asyncio.timeout(UNREGISTER_WITHIN):
            await channel.basic_cancel(tag)
    except (*CONNECTION_ERRORS, TimeoutError) as exc:
        log.debug("could not cancel the consumer of %s: %s", queue, describe(exc))


def _only(headers: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: headers[key] for key in keys if key in headers}


def _without(headers: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    return {key: value for key, value in headers.items() if key not in keys}


def _suspect_of(message: Delivery) -> str:
    """The atask a request in the suspects queue is for ("" if it does not say)."""
    name = message.headers.get(wire.H_SUSPECT_OF)
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return name if isinstance(name, str) else ""


def _delivered_before(message: Delivery) -> bool:
    """Whether a request may have run before: redelivered, or a copy made after a delivery."""
    headers = message.headers
    count = headers.get(wire.BROKER_DELIVERY_COUNT)
    return (
        message.redelivered
        or wire.deaths(headers) > 0
        or (isinstance(count, int) and count > 0)
        or wire.H_LEASE_HOLDER in headers
    )


def died_running(deliveries: int | None) -> str:
    """The last error of a request dead-lettered at its delivery limit."""
    times = f" {deliveries} times" if deliveries else ""
    return (
        f"delivered{times}, and each time its server died, was killed or lost its connection "
        "while running it"
    )


def _handled(intake: Intake, message: Delivery) -> None:
    if message.counted and message.consumer_tag is not None:
        message.counted = False
        intake.handled(message.consumer_tag)


class Delivery:
    """A request as delivered: what a server reads of it, and how it settles it once."""

    __slots__ = (
        "body",
        "channel",
        "consumer_tag",
        "counted",
        "properties",
        "received",
        "redelivered",
        "settled",
        "tag",
    )

    def __init__(self, delivered: DeliveredMessage) -> None:
        self.body = delivered.body
        self.channel = delivered.channel
        self.properties: Basic.Properties = delivered.header.properties
        self.tag = delivered.delivery_tag or 0
        self.consumer_tag: str | None = getattr(delivered.delivery, "consumer_tag", None)
        self.redelivered = bool(delivered.redelivered)
        self.settled = False  # settling twice would make the broker close the channel
        self.counted = False  # in its consumer's live deliveries
        self.received = time.monotonic()

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.properties.reply_to

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

    @property
    def is_batch(self) -> bool:
        return self.properties.message_type == wire.BATCH

    async def ack(self) -> None:
        if not self.settled:
            self.settled = True
            await self.channel.basic_ack(self.tag)

    async def reject(self, *, requeue: bool) -> None:
        if not self.settled:
            self.settled = True
            await self.channel.basic_reject(self.tag, requeue=requeue)

    async def nack(self, *, requeue: bool) -> None:
        if not self.settled:
            self.settled = True
            await self.channel.basic_nack(self.tag, requeue=requeue)
