"""Frames over AMQP: a call's progress reports and stream items on their way back, and the
credits a stream's caller grants its server.

Serve side: each call's frames go through an ``Outbox``, in order; items queued while one
message is out travel together in the next (one publish confirm per batch, not per item).
Credits come to the server's own control queue, which every items message names.
Call side: ``Grants`` publishes credits there, and, while a stream is open, a keepalive (zero
credits) every ``KEEPALIVE`` seconds: a server that hears nothing of a caller for ``IDLE``
seconds closes its stream, so a killed caller leaves no generator running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable

from pamqp.commands import Basic

from atasks.credits import Credits
from atasks.errors import EncodeError, TransportError
from atasks.events import Progress
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import Link, describe
from atasks.transport.backends.amqp.resume import is_direct
from atasks.transport.messages import Frame, Item, Request

log = logging.getLogger("atasks.amqp")

KEEPALIVE = 1.0  # seconds between a stream caller's keepalives
IDLE = 5.0  # seconds without a word from its caller after which a stream is closed
ITEM_OVERHEAD = 4  # bytes of framing per item in a message

Publish = Callable[[bytes, Basic.Properties], Awaitable[None]]


class Outbox:
    """The frames of one call on their way to its caller, in order."""

    def __init__(
        self, publish: Publish, call_id: str, content_type: str, credit_to: Callable[[], str]
    ) -> None:
        self._publish = publish
        self._call_id = call_id
        self._content_type = content_type
        self._credit_to = credit_to
        self._queue: deque[Frame] = deque()
        self._sending: asyncio.Task[None] | None = None
        self._failed: BaseException | None = None
        self.limit = 0  # the largest message, in bytes
        self.on_first_items: Callable[[], None] | None = None  # called as the first is queued

    async def put(self, frame: Frame) -> None:
        """Queue ``frame``. An item goes at once (credits bound how many wait); a progress
        report returns once it is published, as reports always have."""
        if self._failed is not None:
            raise TransportError(f"the frames of call {self._call_id} cannot travel") from (
                self._failed
            )
        if isinstance(frame, Item) and len(frame.body) + ITEM_OVERHEAD > self.limit:
            raise EncodeError(
                f"item {frame.seq} is {len(frame.body)} bytes, over the {self.limit}-byte "
                "message size limit"
            )
        if isinstance(frame, Item) and self.on_first_items is not None:
            self.on_first_items()
            self.on_first_items = None
        self._queue.append(frame)
        if self._sending is None or self._sending.done():
            self._sending = asyncio.ensure_future(self._send())
        if isinstance(frame, Progress):
            await self.flushed()

    async def flushed(self) -> None:
        """Once every frame queued so far is published; raises if one could not be."""
        sending = self._sending
        if sending is not None and not sending.done():
            await asyncio.wait({sending})
        if self._failed is not None:
            raise TransportError(f"the frames of call {self._call_id} cannot travel") from (
                self._failed
            )

    def discard(self) -> None:
        self._queue.clear()
        if self._sending is not None:
            self._sending.cancel()

    async def _send(self) -> None:
        queue = self._queue
        try:
            while queue:
                frame = queue.popleft()
                if isinstance(frame, Progress):
                    await self._publish(b"", wire.progress_properties(frame))
                    continue
                batch, size = [frame.body], len(frame.body) + ITEM_OVERHEAD
                while queue and isinstance(queue[0], Item):
                    body = queue[0].body
                    if size + len(body) + ITEM_OVERHEAD > self.limit:
                        break
                    queue.popleft()
                    batch.append(body)
                    size += len(body) + ITEM_OVERHEAD
                properties = wire.items_properties(
                    self._call_id, frame.seq, self._content_type, self._credit_to()
                )
                await self._publish(wire.pack_items(batch), properties)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the connection went: the stream cannot go on
            log.debug("frames of call %s not sent: %s", self._call_id, describe(exc))
            self._failed = exc
            queue.clear()


class Frames:
    """Serve side: the outboxes and credits of the calls being served."""

    def __init__(self, link: Link) -> None:
        self.link = link
        self.credit_to = ""  # this server's control queue, set once it consumes it
        self._outboxes: dict[str, Outbox] = {}
        self._credits: dict[str, Credits] = {}

    def attach(self, request: Request, reply_to: str) -> None:
        """Give ``request`` its way back for frames, and its credits if it is a stream."""
        call_id = request.call_id
        if request.wants_progress or request.window:
            direct = is_direct(reply_to)

            async def publish(body: bytes, properties: Basic.Properties) -> None:
                channels = self.link.channels
                if channels is None:
                    raise TransportError("no connection to the broker")
                # On the channel of the call's reply, which follows them in order.
                channel = channels.serve_raw if direct else channels.calls_raw
                await channel.basic_publish(body, routing_key=reply_to, properties=properties)

            outbox = Outbox(publish, call_id, request.content_type, lambda: self.credit_to)
            outbox.limit = self.link.max_message_size
            self._outboxes[call_id] = outbox
            request.emit = outbox.put
        if request.window:
            credits = request.credits = self._credits[call_id] = Credits(request.window, IDLE)
            # Its caller can speak only once items tell it where to: its silence counts from
            # the first one.
            self._outboxes[call_id].on_first_items = lambda: credits.grant(0)

    def granted(self, call_id: str, credits: int) -> None:
        window = self._credits.get(call_id)
        if window is not None:
            window.grant(credits)

    def sending(self, call_id: str) -> bool:
        """Whether a call has frames of its own to publish (a stream, or progress reports)."""
        return call_id in self._outboxes

    async def sent(self, call_id: str) -> None:
        """Once the frames of a call that has finished are published (before its outcome)."""
        outbox = self._outboxes.get(call_id)
        if outbox is not None:
            with contextlib.suppress(TransportError):  # then its outcome cannot travel either
                await outbox.flushed()

    def forget(self, call_id: str) -> None:
        self._credits.pop(call_id, None)
        outbox = self._outboxes.pop(call_id, None)
        if outbox is not None:
            outbox.discard()


class Grants:
    """Call side: where the credits of each open stream go, and keepalives for them all."""

    def __init__(self, link: Link, spawn: Callable[[Awaitable[None]], None]) -> None:
        self.link = link
        self._spawn = spawn
        self._to: dict[str, str] = {}  # call id -> the queue of its server's credits
        self._keepalive: asyncio.TimerHandle | None = None

    def learned(self, call_id: str, queue: str) -> None:
        """Items of stream ``call_id`` arrived, naming where its credits go."""
        if self._to.get(call_id) != queue:
            self._to[call_id] = queue
            if self._keepalive is None:
                self._keepalive = asyncio.get_running_loop().call_later(KEEPALIVE, self._keep_alive)

    def closed(self, call_id: str) -> None:
        self._to.pop(call_id, None)
        if not self._to and self._keepalive is not None:
            self._keepalive.cancel()
            self._keepalive = None

    def grant(self, call_id: str, credits: int) -> None:
        queue = self._to.get(call_id)
        if queue is not None:
            self._spawn(self._publish(queue, call_id, credits))

    def _keep_alive(self) -> None:
        self._keepalive = None
        for call_id, queue in self._to.items():
            self._spawn(self._publish(queue, call_id, 0))
        if self._to:
            self._keepalive = asyncio.get_running_loop().call_later(KEEPALIVE, self._keep_alive)

    async def _publish(self, queue: str, call_id: str, credits: int) -> None:
        channels = self.link.channels
        if channels is None:
            return  # the server hears nothing: within IDLE seconds, it closes the stream
        try:
            await channels.calls_raw.basic_publish(
                b"", routing_key=queue, properties=wire.credit_properties(call_id, credits)
            )
        except Exception as exc:  # best effort, in the background: aiormq may raise anything
            log.debug("could not grant credits to stream %s: %s", call_id, describe(exc))
