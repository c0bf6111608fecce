"""The call side: publish requests, match replies and frames to awaiting calls, send
cancellations and credits, and tell callers whose requests were dead-lettered."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Coroutine, Mapping
from functools import partial
from typing import Any, Literal, cast

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from atasks.delays import later
from atasks.errors import (
    ConfigurationError,
    EncodeError,
    JobNotFound,
    NotConnected,
    TransportError,
)
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.coalesce import Coalescer, Unsent
from atasks.transport.backends.amqp.connection import (
    CONNECTION_ERRORS,
    Channels,
    Link,
    describe,
)
from atasks.transport.backends.amqp.dead_notices import pass_on_dead_letter
from atasks.transport.backends.amqp.delays import Ladder
from atasks.transport.backends.amqp.oneway import after_refusal, publish_one_way
from atasks.transport.backends.amqp.reader import consume_in_reader, nothing
from atasks.transport.backends.amqp.resume import Resumer, interrupt_streams
from atasks.transport.backends.amqp.streams import Grants
from atasks.transport.backends.amqp.topology import DIRECT_REPLY_TO, Topology, declare_all
from atasks.transport.backends.amqp.unserved import Watchdog
from atasks.transport.backends.amqp.versions import Peers, reads_batches
from atasks.transport.messages import FrameListener, Reply, Request

log = logging.getLogger("atasks.amqp")

CANCEL_TIMEOUT = 5.0
Replies = Literal["direct", "durable"]
REPLIES: tuple[Replies, ...] = ("direct", "durable")
# Where a call goes, and what the calls of one message share: the channels it is published on,
# its queue, its broker priority, its content type, and (a stream's) call id: a stream goes alone.
Destination = tuple[Channels, str, int, str, str]


class Caller:
    """Sends requests through ``link`` and waits for their replies.

    Either way, calls in flight wait for a lost connection to come back, and a request whose
    publish was not confirmed is published again (its call id makes a second reply a duplicate,
    dropped). Direct replies (the default): RabbitMQ's direct reply-to; after a reconnect the
    servers are asked to resume the calls still awaited (``resume.py``). Durable replies: this
    caller's own quorum queue takes them (it outlives a broker restart or a lost connection, and
    expires once nobody has used it for a while).
    """

    def __init__(
        self,
        link: Link,
        topology: Topology,
        *,
        persistent: bool,
        replies: Replies,
        coalesce: int = 1,
    ) -> None:
        if replies not in REPLIES:
            raise ConfigurationError(
                f"replies must be one of {', '.join(REPLIES)}, not {replies!r}"
            )
        self.link = link
        self.topology = topology
        # Quorum queues keep every message on disk whatever its delivery mode, and 3.10 is
        # slower with persistent ones (measured: p50 1.24x the baseline's, 1.03x without).
        self.persistent = persistent and topology.queue_type == "classic"
        self.durable = replies == "durable"
        client = f"{socket.gethostname()}.{os.getpid()}.{secrets.token_hex(4)}"
        self.reply_to = topology.reply_queue(client) if self.durable else DIRECT_REPLY_TO
        self.closing = False
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._listeners: dict[str, FrameListener] = {}
        self._waiting: dict[str, str] = {}  # call id: atask, of the calls sent to its queue
        self.watchdog = Watchdog(link, topology, self._waiting)  # says when no server consumes
        self._background: set[asyncio.Future[Any]] = set()
        self.grants = Grants(link, self.spawn)
        self._give_up: asyncio.TimerHandle | None = None
        self._declared: set[str] = set()  # request queues declared on this connection
        self.peers = Peers()  # calls travel together once servers said they read batches
        self._ladder = Ladder(link, topology, self._declared)  # delayed requests
        self.resumer = Resumer(link, topology, lambda: self._pending.keys())
        self._requests: Coalescer[Destination, Request] = Coalescer(
            self._publish_requests,
            count=coalesce,
            size=min(wire.BATCH_BYTES, link.max_message_size),
            measure=wire.entry_size,
        )
        link.on_open.append(self._on_open)
        link.on_lost.append(self._on_lost)

    async def _on_open(self, channels: Channels) -> None:
        self._declared.clear()
        await declare_all(
            channels.connection,
            self.topology,
            [],
            reply_queue=self.reply_to if self.durable else None,
            reply_queue_expires=self.link.reconnect_wait,
        )
        await consume_in_reader(
            channels.calls_raw, self.reply_to, self._on_reply, no_ack=not self.durable
        )
        await channels.calls_raw.basic_consume(
            self.topology.dead_letter_notify_queue, partial(pass_on_dead_letter, self.topology)
        )
        if self._give_up is not None:
            self._give_up.cancel()
            self._give_up = None
        if not self.durable:
            self.resumer.reconnected()
        self.watchdog.start()

    def _on_lost(self) -> None:
        if not self.durable:  # a stream's items sent meanwhile go to the old address: lost
            cancel = partial(publish_cancel, self.link, self.topology)
            interrupt_streams(self._pending, list(self._listeners), lambda c: self.spawn(cancel(c)))
        if self._give_up is None:
            self._give_up = asyncio.get_running_loop().call_later(
                self.link.reconnect_wait, self._no_connection
            )

    def _no_connection(self) -> None:
        self._give_up = None
        if not self.link.is_ready:
            self.fail_pending(
                TransportError(
                    f"no connection to the broker for {self.link.reconnect_wait:g}s while "
                    "awaiting the reply; the atask may or may not have run"
                )
            )

    def fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    async def send_request(self, request: Request, on_frame: FrameListener | None) -> Reply:
        if self.closing:
            raise NotConnected("the transport is disconnecting")
        channels = self.link.live() or await self.link.ready()
        size, limit = len(request.body), self.link.max_message_size
        if size > limit:  # the broker would close the channel, and every call on it with it
            raise EncodeError(
                f"the arguments of atask {request.name!r} are {size} bytes, over the "
                f"{limit}-byte message size limit (AMQPTransport(max_message_size=...), "
                "within the broker's own max_message_size)"
            )
        queue = self.topology.request_queue(request.name)
        priority = wire.broker_priority(request.priority)
        loop = asyncio.get_running_loop()
        batching = not request.window and self.peers.may_batch(loop.time())
        alone = "" if batching else request.call_id
        future: asyncio.Future[Reply] = loop.create_future()
        self._pending[request.call_id] = future
        if on_frame is not None:
            self._listeners[request.call_id] = on_frame
        refusals = 0
        when = later(request.headers) if request.headers else None
        try:
            while True:
                if when is not None:
                    try:
                        await self._ladder.publish(request, when, self.reply_to)
                    except Exception as exc:
                        channels, refusals = await unsent(
                            self.link, self.topology, request, exc, channels, refusals
                        )
                        continue
                else:  # with the others ready to go: only a failure to send wakes this call
                    destination = (channels, queue, priority, request.content_type, alone)
                    self._waiting[request.call_id] = request.name
                    self._requests.add(destination, request, future)
                try:
                    reply = await future
                    break
                except Unsent as failed:  # wait again, for a reply or the next failure
                    future = self._pending[request.call_id] = loop.create_future()
                    channels, refusals = await unsent(
                        self.link, self.topology, request, failed.error, channels, refusals
                    )
            self.peers.settled(request.call_id, loop.time())
            return reply
        except asyncio.CancelledError:
            # Even mid-publish: the request may be queued already.
            self.spawn(publish_cancel(self.link, self.topology, request.call_id))
            raise
        finally:
            self._pending.pop(request.call_id, None)
            self._waiting.pop(request.call_id, None)
            self.peers.forget(request.call_id)
            if on_frame is not None:
                self._listeners.pop(request.call_id, None)
            if request.window:
                self.grants.closed(request.call_id)

    async def _publish_requests(self, destination: Destination, requests: list[Request]) -> None:
        """Publish calls that go to one queue together: one message for all of them, or one
        each when together they would be over the message size limit."""
        channels, queue, *_ = destination
        body = requests[0].body
        if len(requests) == 1:
            properties = wire.request_properties(
                requests[0], self.reply_to, persistent=self.persistent
            )
        else:
            body = wire.pack_requests(requests)
            if len(body) > self.link.max_message_size:
                for request in requests:
                    await self._publish_requests(destination, [request])
                return
            batch_id = f"{wire.BATCH}:{requests[0].call_id}"
            properties = wire.batch_properties(
                requests, batch_id, self.reply_to, persistent=self.persistent
            )
        # Not waiting for the write as well: the confirm comes after it.
        publish = cast(aiormq.Channel, channels.calls_raw).basic_publish  # abstract: no wait
        await publish(body, routing_key=queue, properties=properties, mandatory=True, wait=False)

    async def enqueue(self, request: Request) -> None:
        """Publish a fire-and-forget request to its queue, declared first (as its servers
        declare it) so that one sent before any server started waits there; return once the
        broker confirmed it. Not confirmed (the connection was lost): published again."""
        queue = self.topology.request_queue(request.name)
        await self._publish_one_way(request, "", queue, "fire-and-forget request")

    async def broadcast(self, request: Request) -> None:
        """Publish a broadcast request to every server's queue bound to its atask name; raise
        ``JobNotFound`` when no server is (the broker returns it)."""
        exchange = self.topology.broadcast_exchange
        await self._publish_one_way(request, exchange, request.name, "broadcast")

    async def _publish_one_way(
        self, request: Request, exchange: str, routing_key: str, what: str
    ) -> None:
        if self.closing:
            raise NotConnected("the transport is disconnecting")
        if not exchange and (when := later(request.headers)) is not None:  # atasks.delayed
            await self._ladder.publish(request, when, None)
        else:
            await publish_one_way(
                self.link, self.topology, self._declared, request, exchange, routing_key, what
            )

    def _on_reply(self, message: DeliveredMessage) -> Coroutine[Any, Any, None]:
        """Settle the calls ``message`` answers at once, in aiormq's reader
        (``consume_in_reader``: no turn of the loop lost); the coroutine returned, for aiormq's
        task, only acks a durable reply."""
        try:
            self._read_reply(message)
        except Exception:  # never into aiormq's reader, which would close the channel
            log.exception("could not read a reply")
        return self._ack_reply(message) if self.durable else nothing()

    def _read_reply(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        if properties.message_type == wire.FRAME:
            self._on_frame(properties.correlation_id or "", properties, message.body)
            return
        for call_id, outcome, batches in outcomes(properties, message.body):
            self._settle(call_id, outcome, batches)

    async def _ack_reply(self, message: DeliveredMessage) -> None:
        # After the call has it: lost before this, it comes again.
        try:
            await message.channel.basic_ack(message.delivery_tag or 0)
        except CONNECTION_ERRORS as exc:
            log.debug("could not ack a reply: %s", describe(exc))

    def _settle(
        self, call_id: str, outcome: Reply | Exception, batches: bool | None = None
    ) -> None:
        future = self._pending.pop(call_id, None)
        if future is None or future.done():
            log.debug("dropped a reply for unknown or finished call %s", call_id)
        elif isinstance(outcome, Reply):
            self.peers.replied(call_id, batches)
            future.set_result(outcome)
        else:
            future.set_exception(outcome)

    def _on_frame(self, call_id: str, properties: Basic.Properties, body: bytes) -> None:
        listener = self._listeners.get(call_id)
        if listener is None:
            return
        try:
            frames = wire.frames_from(properties, body)
        except ValueError as exc:
            log.debug("dropped a malformed frame of call %s: %s", call_id, exc)
            return
        credit_to = wire.credit_to(properties)
        if credit_to is not None:
            self.grants.learned(call_id, credit_to)
        for frame in frames:
            listener(frame)

    async def ask(
        self, exchange: str, message_type: str, headers: Mapping[str, Any], within: float
    ) -> Reply | None:
        """Publish a question to ``exchange`` and wait up to ``within`` seconds for the first
        answer, which comes like a reply; ``None`` when none comes."""
        query = f"?{secrets.token_hex(8)}"
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[query] = future
        try:
            async with asyncio.timeout(within):
                channels = await self.link.ready()
                await channels.calls_raw.basic_publish(
                    b"",
                    exchange=exchange,
                    properties=Basic.Properties(
                        headers=dict(headers),
                        message_type=message_type,
                        correlation_id=query,
                        reply_to=self.reply_to,
                    ),
                )
                return await future
        except (TimeoutError, TransportError, *CONNECTION_ERRORS):
            return None
        finally:
            self._pending.pop(query, None)
            self.peers.forget(query)

    def spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def finish_background(self, within: float) -> None:
        """Let cancellations on their way out go, then drop what is left."""
        self.resumer.close()
        if self._background:
            await asyncio.wait(set(self._background), timeout=within)
        for task in list(self._background):
            task.cancel()


def outcomes(
    properties: Basic.Properties, body: bytes
) -> list[tuple[str, Reply | Exception, bool | None]]:
    """The outcomes a message of one reply or of several carries: call id, reply (or why it
    cannot be read), and whether its server reads batches (``None``: it did not say)."""
    batches = reads_batches(properties.headers)
    if properties.message_type == wire.REPLIES:
        try:
            return [(reply.call_id, reply, batches) for reply in wire.replies_from(body)]
        except ValueError as exc:  # nobody's reply can be told from it
            log.warning("dropped a malformed message of replies: %s", exc)
            return []
    call_id = properties.correlation_id or ""
    try:
        return [(call_id, wire.reply_from(properties, body), batches)]
    except Exception as exc:  # a malformed reply fails its one call only
        return [(call_id, TransportError(f"malformed reply: {exc!r}"), None)]


async def unsent(
    link: Link,
    topology: Topology,
    request: Request,
    exc: BaseException,
    channels: Channels,
    refusals: int,
) -> tuple[Channels, int]:
    """After ``request`` could not be sent (``exc``): the channels and the count of refusals to
    send it again with, or the error its call fails with raised."""
    if isinstance(exc, aiormq.exceptions.PublishError):
        raise JobNotFound(
            f"no server has ever served atask {request.name!r} in namespace "
            f"{topology.namespace!r}: start a server that registers it"
        ) from None
    if isinstance(exc, aiormq.exceptions.DeliveryError):
        return channels, await after_refusal(refusals, "request", exc)
    if isinstance(exc, CONNECTION_ERRORS):
        # Unconfirmed: publish it again once reconnected (at least once).
        return await link.renewed(channels), refusals
    raise exc


async def publish_cancel(link: Link, topology: Topology, call_id: str) -> None:
    """Ask the servers to cancel call ``call_id``: best effort, in the background."""
    try:
        async with asyncio.timeout(CANCEL_TIMEOUT):
            channels = await link.ready()
        async with asyncio.timeout(CANCEL_TIMEOUT):
            await channels.calls_raw.basic_publish(
                b"",
                exchange=topology.control_exchange,
                properties=Basic.Properties(message_type="cancel", correlation_id=call_id),
            )
    except Exception as exc:  # aiormq may raise anything
        # Under a resource alarm this is expected, and already said (pressure.py).
        level = logging.WARNING if link.pressure.reason is None else logging.DEBUG
        log.log(level, "could not send the cancellation of call %s: %s", call_id, describe(exc))
