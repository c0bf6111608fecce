"""AMQP 0-9-1 transport (RabbitMQ) on aio-pika.

Wire protocol, per namespace ``ns``:

- request queue ``atasks.<ns>.<atask name>``: durable, declared by every server that serves the
  atask. Requests go through the default exchange with ``mandatory=True`` and publisher
  confirms, so a request no queue takes comes back at once as ``JobNotFound``.
- request: ``correlation_id`` = call id, ``reply_to`` = RabbitMQ direct reply-to,
  ``content_type`` = codec media type, ``expiration`` from the deadline, headers for the
  absolute deadline, the parent call and how many servers died holding it.
- reply: to ``reply_to`` with the same ``correlation_id``; its ``type`` says ``ok``, ``error``
  (details in headers) or ``progress`` (a report before the outcome).
- control exchange ``atasks.<ns>.control`` (fanout): cancellations by call id, seen by every
  server, and ``atasks inspect`` requests.
- events exchange ``atasks.<ns>.events`` (topic, with ``events=True``): lifecycle events, each
  message a JSON list of them, at most one message per server every 50 ms.

A server acks a request only after its reply is confirmed, so a server that dies mid-call leaves
the request to another server; the number of such deaths is bounded by ``delivery_limit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractIncomingMessage
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

from atasks.errors import (
    DeliveryLimitExceeded,
    JobNotFound,
    NotConnected,
    TransportError,
    type_name,
)
from atasks.events import SERVER_ID, Event, Progress, ProgressListener, encode_batch
from atasks.namespaces import DEFAULT
from atasks.transport.base import ProgressSink, Reply, Request, RequestHandler, Transport

log = logging.getLogger("atasks.amqp")

URL_ENV = "ATASKS_URL"
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"

H_DEADLINE = "atasks-deadline"
H_PARENT = "atasks-parent"
H_DELIVERIES = "atasks-deliveries"
H_ERROR_TYPE = "atasks-error-type"
H_ERROR_MESSAGE = "atasks-error-message"
H_TRACEBACK = "atasks-traceback"
H_PROGRESS = "atasks-progress"
EVENTS_FLUSH = 0.05  # seconds between two messages of batched events

CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


class AMQPTransport(Transport):
    """Sends and serves atasks through a RabbitMQ broker.

    ``url`` defaults to ``$ATASKS_URL``, then ``amqp://guest:guest@127.0.0.1:5672/``. The
    transport reconnects by itself after losing the broker; calls awaiting a reply when the
    connection drops fail with ``TransportError`` (the atask may still have run).

    ``delivery_limit``: a request whose server died this many times is answered with
    ``DeliveryLimitExceeded`` instead of being delivered again. ``max_message_size``: larger
    requests are refused with an error reply. ``reconnect_wait``: how long a call waits for a
    lost connection to come back before failing.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        namespace: str | None = DEFAULT,
        delivery_limit: int = 5,
        max_message_size: int = 64 * 1024 * 1024,
        reconnect_wait: float = 30.0,
        connect_timeout: float = 10.0,
        persistent: bool = False,
        events: bool = False,
    ) -> None:
        super().__init__(namespace=namespace)
        self.events_enabled = events
        self.url = url or os.environ.get(URL_ENV) or DEFAULT_URL
        self.delivery_limit = delivery_limit
        self.max_message_size = max_message_size
        self.reconnect_wait = reconnect_wait
        self.connect_timeout = connect_timeout
        self.delivery_mode = aio_pika.DeliveryMode.PERSISTENT if persistent else None
        prefix = f"atasks.{namespace or DEFAULT}"
        self._queue_prefix = prefix + "."
        self._control_exchange_name = prefix + ".control"
        self.events_exchange_name = prefix + ".events"
        self._started = time.time()

        self.state = State.NEW
        self._closing = False
        self._ready = asyncio.Event()
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None  # calls, replies, control
        self._serve_channel: AbstractChannel | None = None  # request consumers, qos
        # The hot paths publish and consume on the aiormq channels underneath: aio-pika's
        # message objects cost more than the rest of a call.
        self._raw: aiormq.abc.AbstractChannel | None = None
        self._serve_raw: aiormq.abc.AbstractChannel | None = None
        self._events_raw: aiormq.abc.AbstractChannel | None = None
        self._reconnector: asyncio.Task[None] | None = None
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._listeners: dict[str, ProgressListener] = {}
        self._event_batch: list[Event] = []
        self._event_flush: asyncio.TimerHandle | None = None
        self._background: set[asyncio.Task[Any]] = set()

        self._handlers: dict[str, RequestHandler] = {}
        self._consumers: dict[str, str] = {}  # atask name → consumer tag
        self._running: dict[str, asyncio.Task[Any]] = {}
        self._cancelled: dict[str, float] = {}
        self._requeueing: dict[str, asyncio.Event] = {}
        self._capacity = 0
        self._qos_applied = -1
        self._qos_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"AMQPTransport({self.url!r}, namespace={self.namespace!r})"

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    def queue_name(self, atask_name: str) -> str:
        return self._queue_prefix + atask_name

    # --- connection ----------------------------------------------------------------------

    async def connect(self) -> None:
        if self.state is State.CLOSED:
            raise TransportError(f"{self!r} is closed; create a new transport")
        if self.state is not State.NEW:
            return
        try:
            await self._open()
        except CONNECTION_ERRORS as exc:
            raise TransportError(f"cannot connect to {_safe_url(self.url)}: {exc}") from exc
        except TimeoutError as exc:
            raise TransportError(f"timed out connecting to {_safe_url(self.url)}") from exc

    async def _open(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=self.connect_timeout)
        try:
            channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
            raw = await channel.get_underlay_channel()
            await raw.basic_consume(DIRECT_REPLY_TO, self._on_reply, no_ack=True)
            control = await channel.declare_exchange(
                self._control_exchange_name, aio_pika.ExchangeType.FANOUT, durable=True
            )
            # Not on the serving channel: its channel-wide prefetch would hold control messages
            # back behind the requests in progress.
            control_queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            await control_queue.bind(control)
            await control_queue.consume(self._on_control, no_ack=True)
            serve_channel = await connection.channel(publisher_confirms=True)
            if self.events_enabled:
                events_channel = await connection.channel(publisher_confirms=False)
                await events_channel.declare_exchange(
                    self.events_exchange_name, aio_pika.ExchangeType.TOPIC, durable=True
                )
                self._events_raw = await events_channel.get_underlay_channel()
            self._connection, self._channel, self._serve_channel = (
                connection,
                channel,
                serve_channel,
            )
            self._raw = raw
            self._serve_raw = await serve_channel.get_underlay_channel()
            self._qos_applied = -1
            if self._capacity:
                await self._apply_qos()
            for name in list(self._handlers):
                await self._consume(name)
        except BaseException:
            await connection.close()
            raise
        connection.close_callbacks.add(self._on_connection_closed)
        for used in (channel, serve_channel):
            used.close_callbacks.add(self._on_channel_closed)
        self.state = State.CONNECTED
        self._ready.set()

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None) -> None:
        if self.state is not State.CONNECTED or self._closing:
            return
        log.warning("lost the broker connection (%s); reconnecting", exc or "closed")
        self.state = State.RECONNECTING
        self._ready.clear()
        self._consumers.clear()
        self._fail_pending(
            TransportError(
                "lost the connection to the broker while awaiting the reply; "
                "the atask may or may not have run"
            )
        )
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    def _on_channel_closed(self, _sender: Any, exc: BaseException | None) -> None:
        # The broker closes a channel, not the connection, on e.g. an oversized message or a
        # consumer timeout: start over with a new connection rather than half work.
        connection = self._connection
        if self.state is State.CONNECTED and not self._closing and connection is not None:
            log.warning("the broker closed a channel (%s); reconnecting", exc)

            async def close() -> None:
                with contextlib.suppress(Exception):
                    await connection.close()

            self._spawn(close())

    async def _reconnect(self) -> None:
        delay = 0.1
        while self.state is State.RECONNECTING:
            try:
                await self._open()
            except Exception as exc:  # keep trying whatever the failure
                log.debug("reconnect failed: %s; next try in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                log.warning("reconnected to the broker")
                return

    async def disconnect(self) -> None:
        if self.state is State.CLOSED or self._closing:
            return
        self._closing = True  # no new calls; the connection still carries what is on its way
        reconnector, self._reconnector = self._reconnector, None
        if reconnector is not None:
            reconnector.cancel()
        try:
            await self.drain(0)
            if self._event_flush is not None:
                self._event_flush.cancel()
                await self._flush_events()
            if self._background:  # cancellations on their way to servers: let them go out
                await asyncio.wait(set(self._background), timeout=1)
        finally:
            self.state = State.CLOSED
            self._ready.set()  # wakes calls waiting for a reconnect: they find it closed
            self._fail_pending(NotConnected(f"{self!r} was disconnected"))
            for task in list(self._background):
                task.cancel()
            connection, self._connection = self._connection, None
            if connection is not None:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await connection.close()

    def _fail_pending(self, exc: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)

    async def _wait_ready(self) -> aiormq.abc.AbstractChannel:
        if self.state is State.NEW or self.state is State.CLOSED:
            raise NotConnected(f"{self!r} is not connected: await transport.connect() first")
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), self.reconnect_wait)
            except TimeoutError:
                raise TransportError(
                    f"no connection to the broker at {_safe_url(self.url)} for "
                    f"{self.reconnect_wait:.0f}s"
                ) from None
            if self.closed:  # disconnect() woke us
                raise NotConnected(f"{self!r} was disconnected")
        assert self._raw is not None
        return self._raw

    # --- call side -----------------------------------------------------------------------

    async def send_request(
        self, request: Request, on_progress: ProgressListener | None = None
    ) -> Reply:
        if self._closing:
            raise NotConnected(f"{self!r} is disconnecting")
        channel = await self._wait_ready()
        headers: dict[str, Any] = {}
        if on_progress is not None:
            headers[H_PROGRESS] = 1
            self._listeners[request.call_id] = on_progress
        if request.deadline is not None:
            headers[H_DEADLINE] = repr(request.deadline)  # AMQP floats are 32-bit
        if request.parent_id is not None:
            headers[H_PARENT] = request.parent_id
        properties = Basic.Properties(
            headers=headers or None,
            content_type=request.content_type,
            delivery_mode=self.delivery_mode,
            correlation_id=request.call_id,
            reply_to=DIRECT_REPLY_TO,
            expiration=_expiration(request.deadline),
        )
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.call_id] = future
        try:
            try:
                await channel.basic_publish(
                    request.body,
                    routing_key=self.queue_name(request.name),
                    properties=properties,
                    mandatory=True,
                )
            except aiormq.exceptions.PublishError:
                raise JobNotFound(
                    f"no server has ever served atask {request.name!r} in namespace "
                    f"{self.namespace!r}: start a server that registers it"
                ) from None
            except aiormq.exceptions.DeliveryError as exc:
                raise TransportError(f"the broker refused the request: {exc}") from exc
            except CONNECTION_ERRORS as exc:
                raise TransportError(f"could not publish the request: {exc}") from exc
            return await future
        except asyncio.CancelledError:
            # Even mid-publish: the request may be queued already.
            self._spawn(self._publish_cancel(request.call_id))
            raise
        finally:
            self._pending.pop(request.call_id, None)
            if on_progress is not None:
                self._listeners.pop(request.call_id, None)

    async def _on_reply(self, message: DeliveredMessage) -> None:
        properties = message.header.properties
        if properties.message_type == "progress":
            self._on_progress(properties.correlation_id or "", properties.headers or {})
            return
        future = self._pending.pop(properties.correlation_id or "", None)
        if future is None or future.done():
            log.debug("dropped a reply for unknown or finished call %s", properties.correlation_id)
        else:
            try:
                future.set_result(_reply_from(message))
            except Exception as exc:  # a malformed reply fails its one call only
                future.set_exception(TransportError(f"malformed reply: {exc!r}"))

    def _on_progress(self, call_id: str, headers: Mapping[str, Any]) -> None:
        listener = self._listeners.get(call_id)
        if listener is None:
            return
        try:
            total = headers.get("total")
            progress = Progress(
                call_id=call_id,
                atask=str(headers.get("atask", "")),
                done=float(headers["done"]),
                total=float(total) if total is not None else None,
                note=str(headers.get("note", "")),
            )
        except (KeyError, TypeError, ValueError):
            log.debug("dropped a malformed progress report for call %s", call_id)
            return
        try:
            listener(progress)
        except Exception:
            log.exception("progress listener of call %s failed", call_id)

    async def _publish_cancel(self, call_id: str) -> None:
        try:
            channel = await asyncio.wait_for(self._wait_ready(), 5)
            await asyncio.wait_for(
                channel.basic_publish(
                    b"",
                    exchange=self._control_exchange_name,
                    properties=Basic.Properties(message_type="cancel", correlation_id=call_id),
                ),
                5,
            )
        except Exception as exc:  # best effort, in the background: aiormq may raise anything
            log.warning("could not send the cancellation of call %s: %s", call_id, exc)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # --- serve side ----------------------------------------------------------------------

    async def register_callback(self, name: str, handler: RequestHandler) -> None:
        await self._wait_ready()
        self._handlers[name] = handler
        await self._consume(name)

    async def _consume(self, name: str) -> None:
        assert self._serve_channel is not None
        assert self._serve_raw is not None
        await self._apply_qos()  # before the first delivery, not after a burst of them
        await self._serve_channel.declare_queue(self.queue_name(name), durable=True)
        ok = await self._serve_raw.basic_consume(
            self.queue_name(name), self._request_callback(name)
        )
        assert ok.consumer_tag is not None
        self._consumers[name] = ok.consumer_tag

    async def unregister_callback(self, name: str) -> None:
        tag = self._consumers.pop(name, None)
        if tag is not None and self._serve_raw is not None:
            try:
                await self._serve_raw.basic_cancel(tag)
            except CONNECTION_ERRORS as exc:
                log.debug("could not cancel consumer of %s: %s", name, exc)
        self._handlers.pop(name, None)

    async def drain(self, grace: float) -> None:
        running = set(self._running.values())
        if running and grace > 0:
            await asyncio.wait(running, timeout=grace)
        for task in list(self._running.values()):
            task.cancel()
        if self._running:
            await asyncio.wait(set(self._running.values()))

    def set_capacity(self, requests: int) -> None:
        self._capacity = requests
        if self._serve_channel is None or self._qos_applied == requests:
            return
        if self._qos_task is None or self._qos_task.done():
            self._qos_task = asyncio.get_running_loop().create_task(self._apply_qos())

    async def _apply_qos(self) -> None:
        # One update at a time, always converging on the latest capacity.
        while self._serve_channel is not None and self._qos_applied != self._capacity:
            target = self._capacity
            try:
                await self._serve_channel.set_qos(prefetch_count=target, global_=True)
            except CONNECTION_ERRORS as exc:
                log.debug("could not set prefetch to %d: %s", target, exc)
                return
            self._qos_applied = target

    def _request_callback(
        self, name: str
    ) -> Callable[[DeliveredMessage], Coroutine[Any, Any, None]]:
        async def on_request(delivered: DeliveredMessage) -> None:
            # aiormq runs each delivery in a task of its own: that task is the call.
            message = _Delivery(delivered)
            task = asyncio.current_task()
            assert task is not None
            key = message.correlation_id or f"?{id(task)}"
            self._running[key] = task
            try:
                await self._serve(name, message)
            finally:
                if self._running.get(key) is task:  # a requeued copy may have taken the key
                    del self._running[key]

        return on_request

    async def _serve(self, name: str, message: _Delivery) -> None:
        call_id = message.correlation_id
        replied = False
        try:
            if not call_id or not message.reply_to:
                log.warning("dropped a request for %r without correlation_id or reply_to", name)
                await message.reject(requeue=False)
                return
            if call_id in self._cancelled:
                log.debug("dropped request %s: cancelled before it ran", call_id)
                await message.ack()
                return
            requeueing = self._requeueing.get(call_id)
            if requeueing is not None:  # our copy overtook the ack of its original
                await requeueing.wait()
            if message.redelivered:
                await self._count_death(name, message)
                return
            handler = self._handlers.get(name)
            if handler is None:  # delivered while this server stopped serving it
                await self._requeue(name, message, message.headers)
                return
            request = self._request_from(name, message)
            reply = request if isinstance(request, Reply) else await handler(request)
            replied = True
            try:
                await self._publish_reply(message.reply_to, reply)
            except aiormq.exceptions.DeliveryError as exc:
                # The broker refused the reply: run the request again rather than leave its
                # caller waiting (it counts towards the delivery limit).
                log.warning("the broker refused the reply to %s (%s): requeued", call_id, exc)
                await message.nack(requeue=True)
                return
            await message.ack()
        except asyncio.CancelledError:
            await self._after_cancel(name, call_id, message, replied=replied)
        except CONNECTION_ERRORS as exc:
            log.warning("request %s of %r not finished: %s", call_id, name, exc)
            with contextlib.suppress(*CONNECTION_ERRORS):  # on a live channel, try again
                await message.nack(requeue=True)

    def _request_from(self, name: str, message: _Delivery) -> Request | Reply:
        call_id = message.correlation_id or ""
        if len(message.body) > self.max_message_size:
            log.warning(
                "refused request %s for %r: %d bytes over the %d-byte limit",
                call_id,
                name,
                len(message.body),
                self.max_message_size,
            )
            return _error_reply(
                call_id,
                TransportError(
                    f"request of {len(message.body)} bytes is over this server's "
                    f"{self.max_message_size}-byte limit"
                ),
            )
        headers = message.headers
        parent = headers.get(H_PARENT)
        deadline = _deadline_from(headers)
        request = Request(
            name=name,
            call_id=call_id,
            content_type=message.content_type or "",
            body=message.body,
            parent_id=parent if isinstance(parent, str) else None,
            deadline=deadline,
            wants_progress=bool(headers.get(H_PROGRESS)),
        )
        if request.wants_progress and message.reply_to:
            request.report = self._progress_sink(message.reply_to, call_id)
        return request

    def _progress_sink(self, reply_to: str, call_id: str) -> ProgressSink:
        async def report(progress: Progress) -> None:
            headers: dict[str, Any] = {
                "atask": progress.atask,
                "done": repr(progress.done),
                "note": progress.note,
            }
            if progress.total is not None:
                headers["total"] = repr(progress.total)
            assert self._serve_raw is not None
            await self._serve_raw.basic_publish(
                b"",
                routing_key=reply_to,
                properties=Basic.Properties(
                    headers=headers, message_type="progress", correlation_id=call_id
                ),
            )

        return report

    async def publish_event(self, event: Event) -> None:
        # Batched: one message per EVENTS_FLUSH seconds, not one per event, so that events
        # cost servers and broker a fraction of what the calls themselves cost.
        if self._events_raw is None:
            return
        self._event_batch.append(event)
        if self._event_flush is None:
            self._event_flush = asyncio.get_running_loop().call_later(
                EVENTS_FLUSH, lambda: self._spawn(self._flush_events())
            )

    async def _flush_events(self) -> None:
        self._event_flush = None
        batch, self._event_batch = self._event_batch, []
        channel = self._events_raw
        if not batch or channel is None or not self._ready.is_set():
            return
        try:
            await channel.basic_publish(
                encode_batch(batch),
                exchange=self.events_exchange_name,
                routing_key="events",
                properties=Basic.Properties(content_type="application/json"),
            )
        except CONNECTION_ERRORS as exc:
            log.debug("dropped %d events: %s", len(batch), exc)

    async def _count_death(self, name: str, message: _Delivery) -> None:
        """A redelivered request: its server died holding it. Count the death, and either give
        up on it or queue it again with the count."""
        headers = dict(message.headers or {})
        previous = headers.get(H_DELIVERIES, 0)
        deaths = (previous if isinstance(previous, int) else 0) + 1
        if deaths >= self.delivery_limit:
            log.error(
                "request %s for %r: %d servers died running it; giving up",
                message.correlation_id,
                name,
                deaths,
            )
            assert message.reply_to is not None
            error = DeliveryLimitExceeded(
                f"atask {name!r} was taken by {deaths} servers and each died before replying; "
                "it will not be delivered again"
            )
            await self._publish_reply(
                message.reply_to, _error_reply(message.correlation_id or "", error)
            )
            await message.ack()
            return
        headers[H_DELIVERIES] = deaths
        await self._requeue(name, message, headers)

    async def _requeue(self, name: str, message: _Delivery, headers: dict[str, Any]) -> None:
        """Queue a copy of ``message`` again (confirmed), then ack the original.

        Until the ack is written, a copy reaching this server waits: run at once, a request
        that kills its server would take the unacked original down too, doubling it.
        """
        assert self._serve_raw is not None
        call_id = message.correlation_id or ""
        self._requeueing[call_id] = done = asyncio.Event()
        deadline = _deadline_from(headers)
        properties = message.properties
        copy = Basic.Properties(
            headers=headers,
            content_type=properties.content_type,
            delivery_mode=properties.delivery_mode,
            correlation_id=properties.correlation_id,
            reply_to=properties.reply_to,
            expiration=_expiration(deadline),
        )
        try:
            await self._serve_raw.basic_publish(
                message.body, routing_key=self.queue_name(name), properties=copy
            )
            await message.ack()
        finally:
            done.set()
            if self._requeueing.get(call_id) is done:
                del self._requeueing[call_id]

    async def _after_cancel(
        self, name: str, call_id: str | None, message: _Delivery, *, replied: bool
    ) -> None:
        if message.settled:  # cancelled while acking: nothing left to do
            return
        try:
            if replied or (call_id is not None and call_id in self._cancelled):
                await message.ack()  # answered, or cancelled by its caller: done with it
                return
            # This server is shutting down: hand the request to another server. A fresh copy,
            # not a nack, so that the next server does not count it as a server death.
            try:
                await self._requeue(name, message, dict(message.headers or {}))
            except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError):
                await message.nack(requeue=True)
        except CONNECTION_ERRORS:
            pass

    async def _publish_reply(self, reply_to: str, reply: Reply) -> None:
        assert self._serve_raw is not None
        headers: dict[str, Any] | None = None
        if not reply.ok:
            headers = {
                H_ERROR_TYPE: reply.error_type,
                H_ERROR_MESSAGE: reply.error_message,
                H_TRACEBACK: reply.traceback,
            }
        await self._serve_raw.basic_publish(
            reply.body,
            routing_key=reply_to,
            properties=Basic.Properties(
                headers=headers,
                content_type=reply.content_type,
                correlation_id=reply.call_id,
                message_type="ok" if reply.ok else "error",
            ),
        )

    async def _on_control(self, message: AbstractIncomingMessage) -> None:
        if message.type == "inspect" and message.reply_to and self.server_statistics:
            await self._answer_inspect(message.reply_to, message.correlation_id)
        elif message.type == "cancel" and message.correlation_id:
            self._remember_cancelled(message.correlation_id)
            task = self._running.get(message.correlation_id)
            if task is not None:
                log.debug("cancelling call %s at its caller's request", message.correlation_id)
                task.cancel()

    async def _answer_inspect(self, reply_to: str, correlation_id: str | None) -> None:
        assert self.server_statistics is not None
        host, _, pid = SERVER_ID.rpartition(":")
        answer = {
            **self.server_statistics(),
            "server": SERVER_ID,
            "host": host,
            "pid": int(pid),
            "uptime": time.time() - self._started,
            "events": self.events_enabled,
        }
        try:
            assert self._channel is not None
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    json.dumps(answer).encode(),
                    content_type="application/json",
                    correlation_id=correlation_id,
                ),
                routing_key=reply_to,
                mandatory=False,
            )
        except (*CONNECTION_ERRORS, aiormq.exceptions.DeliveryError) as exc:
            log.debug("could not answer an inspect request: %s", exc)

    def _remember_cancelled(self, call_id: str) -> None:
        now = time.monotonic()
        self._cancelled[call_id] = now
        # Forget the oldest: an hour, or beyond 100k ids, is past any queued request's life.
        while self._cancelled:
            oldest, at = next(iter(self._cancelled.items()))
            if len(self._cancelled) <= 100_000 and now - at < 3600:
                break
            del self._cancelled[oldest]


class _Delivery:
    """A request as delivered: what a server reads of it, and how it settles it."""

    __slots__ = ("body", "channel", "properties", "redelivered", "settled", "tag")

    def __init__(self, delivered: DeliveredMessage) -> None:
        self.body = delivered.body
        self.channel = delivered.channel
        self.properties = delivered.header.properties
        self.tag = delivered.delivery_tag or 0
        self.redelivered = bool(delivered.redelivered)
        self.settled = False  # settling twice would make the broker close the channel

    @property
    def correlation_id(self) -> str | None:
        return self.properties.correlation_id

    @property
    def reply_to(self) -> str | None:
        return self.properties.reply_to

    @property
    def content_type(self) -> str | None:
        return self.properties.content_type

    @property
    def headers(self) -> dict[str, Any]:
        return self.properties.headers or {}

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


def _deadline_from(headers: Mapping[str, Any]) -> float | None:
    text = headers.get(H_DEADLINE)
    if text is None:
        return None
    try:
        return float(str(text))
    except ValueError:
        return None


def _expiration(deadline: float | None) -> str | None:
    """Per-message TTL in milliseconds, so the broker drops a request nobody awaits any more."""
    if deadline is None:
        return None
    return str(max(int((deadline - time.time()) * 1000), 1))


def _reply_from(message: DeliveredMessage) -> Reply:
    properties = message.header.properties
    headers = properties.headers or {}
    return Reply(
        call_id=properties.correlation_id or "",
        ok=properties.message_type == "ok",
        content_type=properties.content_type or "",
        body=message.body,
        error_type=str(headers.get(H_ERROR_TYPE, "")),
        error_message=str(headers.get(H_ERROR_MESSAGE, "")),
        traceback=str(headers.get(H_TRACEBACK, "")),
    )


def _error_reply(call_id: str, exc: Exception) -> Reply:
    return Reply(
        call_id=call_id,
        ok=False,
        content_type="",
        body=b"",
        error_type=type_name(exc),
        error_message=str(exc),
    )


def _safe_url(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
