"""What every serve path of one server shares: its handlers and capacity, the calls it holds and
runs, the parts that settle them, and running one call."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

from atasks.errors import TransportError
from atasks.transport import serving
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import Link
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.lease import Leases
from atasks.transport.backends.amqp.server.kept import KeptReplies
from atasks.transport.backends.amqp.server.message import Message
from atasks.transport.backends.amqp.server.policies import CANCELLED_FOR, CANCELLED_KEPT, Memory
from atasks.transport.backends.amqp.server.settlement import Settlement
from atasks.transport.backends.amqp.streams import Frames
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.contract import Capacity, RequestHandler
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.amqp")

SUSPECTS = "(suspects)"  # the intake of the suspects queue


class Shared:
    """The state of one server that its serve paths (lone requests, batches, broadcasts,
    suspects, control) share."""

    def __init__(
        self,
        link: Link,
        topology: Topology,
        settlement: Settlement,
        leases: Leases,
        frames: Frames,
    ) -> None:
        self.link = link
        self.topology = topology
        self.settlement = settlement
        self.leases = leases
        self.frames = frames
        self.kept = KeptReplies(link)
        self.handlers: dict[str, RequestHandler] = {}
        self.capacity: Capacity | None = None
        self.running: dict[str, asyncio.Task[Any]] = {}  # by call id (or a key of its own)
        self.held: dict[int, Message] = {}  # every delivery being served, settled or not
        # Calls running here, each with the futures of later deliveries awaiting its reply.
        self.inflight: dict[str, list[asyncio.Future[Reply]]] = {}
        self.cancelled: Memory[str, None] = Memory(CANCELLED_KEPT, CANCELLED_FOR)
        self.suspects = Intake(SUSPECTS)
        self.registered = asyncio.Event()  # set, and replaced, at each registration
        self.rebalance: Callable[[], None] = lambda: None  # set by the consumers

    def pause(self, intake: Intake, message: Message) -> None:
        """No slot is free for what ``message`` brought: take no more from its queue until one
        frees (its consumer, if it still delivers there, is cancelled)."""
        if intake.tag is not None and intake.tag == message.consumer_tag:
            intake.pause()
            self.rebalance()

    def kept_reply(self, call_id: str) -> Reply | None:
        """The reply kept for ``call_id`` while the connection was gone, if any."""
        kept = self.kept.get(call_id)
        return None if kept is None else kept.reply

    def registering(self) -> None:
        self.registered.set()
        self.registered = asyncio.Event()

    async def handler_within(self, name: str, seconds: float) -> RequestHandler | None:
        """The handler of ``name`` once registered, if within ``seconds``: a server takes
        suspects once it serves one atask, and registers the others one by one."""
        try:
            async with asyncio.timeout(seconds):
                while (handler := self.handlers.get(name)) is None:
                    await self.registered.wait()
        except TimeoutError:
            return None
        return handler

    async def run(self, name: str, request: Request, handler: RequestHandler) -> Reply:
        """Run one call: its reply, once every frame it sent is out."""
        call_id = request.call_id
        awaiting: list[asyncio.Future[Reply]] = []  # a future only for whoever waits
        self.inflight[call_id] = awaiting
        try:
            reply = await serving.run(name, request, handler)
            if self.frames.sending(call_id):  # the outcome comes after every frame
                await self.frames.sent(call_id)
            for waiter in awaiting:
                if not waiter.done():
                    waiter.set_result(reply)
        finally:
            self.frames.forget(call_id)
            for waiter in awaiting:
                waiter.cancel()  # no-op once it has the reply
            del self.inflight[call_id]
        return reply

    async def known_outcome(
        self, name: str, message: Message, call_id: str, *, hold: bool = True
    ) -> Reply | None:
        """The reply of a call this server ran, or is running, for an earlier delivery; with
        ``hold``, leasing ``message`` should the wait be long."""
        kept = self.kept.get(call_id)
        if kept is not None:
            return kept.reply
        sent = self.settlement.resuming.sent.get(call_id)
        if sent is not None:
            return sent
        awaiting = self.inflight.get(call_id)
        if awaiting is None:
            return None
        inflight: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        awaiting.append(inflight)
        try:
            with self.leases.holding(name, message) if hold else contextlib.nullcontext():
                return await inflight
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise
            return None  # that run was cancelled: this delivery runs it afresh

    def request_from(self, name: str, message: Message) -> Request | Reply:
        """The request ``message`` carries, or the refusal of one over the size limit."""
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
            self.frames.attach(request, message.reply_to)
        return request

    def give_back_slot(self, request: Request) -> None:
        """Give back the slot ``request`` took but never used."""
        if request.slot_taken and self.capacity is not None:
            request.slot_taken = False
            self.capacity.give_back_untaken()
