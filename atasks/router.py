"""The router: turns a call into a request and a reply into a value or an exception, and serves
requests by running the registered atask.

Call side:  args → codec → Request → transport → Reply → codec → value or raised exception.
Serve side: Request → codec → atask(*args) → codec → Reply.
The router never imports a broker library.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from atasks import errors
from atasks import tracing as _tracing
from atasks.auth_context import AuthContext, admit, auth_var, stamp
from atasks.calls import (
    CallScope,
    current_scope,
    effective_priority,
    enter_priority,
    leave_priority,
    new_call_id,
    scope_deadline,
)
from atasks.codecs.base import Codec, decode, decode_now, encode, encode_now
from atasks.codecs.pickle_codec import PickleCodec
from atasks.errors import (
    AuthError,
    CodecError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    JobNotFound,
    NoCodecRegistered,
    RemoteError,
    type_name,
)
from atasks.events import Event, Progress, ProgressRelay, ProgressSink, progress_listener
from atasks.namespaces import DEFAULT, bind_router, get_codec, get_transport, namespace
from atasks.processes import ProcessPool
from atasks.propagation import apply, capture, propagated, restore
from atasks.retry import give_up
from atasks.slots import Slots
from atasks.streams import serve_items
from atasks.transport.base import FrameListener, Reply, Request, Transport
from atasks.transport.classic import ClassicAdapter, modern

if TYPE_CHECKING:
    from atasks.otel import Served, Tracing
    from atasks.schedules.scheduler import Scheduler
    from atasks.streams import Received
    from atasks.tasks import ATask

log = logging.getLogger("atasks.router")
_OTEL, _modules = _tracing.OTEL_MODULE, sys.modules  # read on every call: tracing set up yet?
_unsigned_pickle_warned = False  # the warning about unsigned pickle on a broker: once a process

DEFAULT_CONCURRENCY = 64
DEFAULT_GRACE = 10.0
MESSAGE_LIMIT = 2_000
TRACEBACK_LIMIT = 16_000


@dataclass(frozen=True, slots=True)
class RouterStatistics:
    """A snapshot of what a serving router is doing."""

    namespace: str
    atasks: tuple[str, ...]
    concurrency: int
    running: int
    parked: int
    waiting: int  # atasks waiting for a slot
    succeeded: int
    failed: int
    retried: int  # attempts made again by ``@atask(retry=...)``
    cancelled: int
    started_at: float
    scheduler: bool = False  # holds the namespace's scheduler role
    schedules: dict[str, Any] | None = None  # the holder's view of each schedule

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


class Router:
    """Sends calls of a namespace's atasks and, once activated, serves them.

    ``codec`` and ``transport`` default to those bound to ``namespace`` at the time of each call.
    A transport written to the 2019 interface (``Transport.classic``) is reached through its
    ``ClassicAdapter``: no deadline, cancellation or progress crosses it.

    Each request carries the atask name and call id inside its encoded payload (signed, with a
    signing codec), and a server refuses a request whose payload names another atask or call.
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT,
        codec: Codec | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.namespace = namespace
        self._codec = codec
        self._transport = transport
        self._serving: Transport | None = None
        self._served: list[str] = []
        self._slots: Slots | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._registering: set[asyncio.Task[None]] = set()
        self._succeeded = 0
        self._failed = 0
        self._retried = 0
        self._cancelled = 0
        self._started_at = 0.0
        self._processes: int | None = None
        self._pool: ProcessPool | None = None
        self._scheduler: Scheduler | None = None
        self._ns = bind_router(self, namespace)  # never replaced: reset() empties it in place

    @property
    def codec(self) -> Codec:
        """The codec given to this router, else the one its namespace has now."""
        codec = self._codec if self._codec is not None else self._ns.codec
        return codec if codec is not None else get_codec(self.namespace)  # which raises

    @property
    def transport(self) -> Transport:
        """The transport given to this router, else the one its namespace has now."""
        transport = self._transport if self._transport is not None else self._ns.transport
        return transport if transport is not None else get_transport(self.namespace)  # raises

    @property
    def active(self) -> bool:
        return self._serving is not None

    def __repr__(self) -> str:
        return f"Router(namespace={self.namespace!r})"

    # --- call side -----------------------------------------------------------------------

    async def call(
        self,
        atask: ATask[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        stream: Received | None = None,
    ) -> Any:
        """Run ``atask(*args, **kwargs)`` on a server and return its result; with ``stream``,
        its items go there and the result is how many the server sent."""
        ns = self._ns
        codec = self._codec or ns.codec or self.codec  # the property raises for none
        transport = self._transport or ns.transport or self.transport
        if transport.classic:
            transport = modern(transport)
        if stream is not None and not transport.streams:
            raise ConfigurationError(
                f"atask {atask.name!r} is a stream, and {transport!r} does not carry streams"
            )
        if self._registering:  # an atask imported since activate(): served once registered
            await asyncio.wait(set(self._registering))
        scope = current_scope.get()
        deadline = scope_deadline(scope, atask.timeout)
        call_id = new_call_id()
        parent_id = scope.call_id if scope is not None else None
        # Context that travels, each costing nothing when unused: traces, auth, variables.
        tracing = _tracing.active
        if tracing is None and _OTEL in _modules:
            tracing = _tracing_in_force()
        span = (
            tracing.client(transport, self.namespace, atask.name, call_id, parent_id)
            if tracing is not None
            else None
        )
        try:
            listener = progress_listener()
            relay = ProgressRelay(listener) if listener is not None else None
            on_frame: FrameListener | None = relay
            if stream is not None:
                stream.opened(call_id, transport, relay)
                on_frame = stream
            payload = _payload(atask, args, kwargs, call_id)
            body = (
                encode_now(codec, payload) if codec._fast_encode else await encode(codec, payload)
            )
            request = self._request(
                atask, codec, body, call_id, parent_id, deadline, listener is not None
            )
            if stream is not None:
                request.window = stream.window
            if span is not None:
                assert tracing is not None
                tracing.inject(span, request)
            slots = scope.slots if scope is not None else None
            direct = False
            if slots is not None:
                assert scope is not None
                direct = slots.call_started(scope)
            try:
                if deadline is None:
                    reply = await transport.send_request(request, on_frame)
                else:
                    loop = asyncio.get_running_loop()
                    try:
                        async with asyncio.timeout_at(loop.time() + deadline - time.time()):
                            reply = await transport.send_request(request, on_frame)
                    except TimeoutError:
                        raise TimeoutError(
                            f"atask {atask.name!r} did not finish before its deadline"
                        ) from None
            finally:
                if slots is not None:
                    assert scope is not None
                    # Always take a slot again, even when this child was cancelled: the parent
                    # may go on (a timeout around one child), and must not run without a slot.
                    await slots.call_ended(scope, direct)
            if relay is not None:  # every report reaches the listener before the outcome
                await relay.flushed()
            if reply.ok and codec._fast_decode and reply.content_type == codec.content_type:
                return decode_now(codec, reply.body)
            return await self._outcome(reply, codec)
        except BaseException as exc:
            if span is not None:
                assert tracing is not None
                tracing.failed(span, exc)
            raise
        finally:
            if span is not None:
                span.end()

    def _request(
        self,
        atask: ATask[Any, Any],
        codec: Codec,
        body: bytes,
        call_id: str,
        parent_id: str | None,
        deadline: float | None,
        wants_progress: bool,
    ) -> Request:
        """The request of one call, ``body`` its encoded ``_payload``, with the context that
        travels."""
        request = Request(
            name=atask.name,
            call_id=call_id,
            content_type=codec.content_type,
            body=body,
            parent_id=parent_id,
            deadline=deadline,
            priority=effective_priority(atask.priority),
            wants_progress=wants_progress,
        )
        if auth_var.get() is not None:
            stamp(request, codec)
        return request

    async def enqueue(
        self,
        atask: ATask[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        call_id: str | None = None,
    ) -> str:
        """Fire and forget ``atask(*args, **kwargs)``: one server runs it, at least once; return
        its call id once the transport has durably accepted the request.

        Works for any atask. The request carries no deadline: the atask's ``timeout`` counts
        from when a server starts it. ``call_id`` (default: a new one) names it on the wire and
        in events and dead letters, e.g. a schedule's deterministic id.
        """
        return await self._one_way(atask, args, kwargs, call_id, broadcast=False)

    async def broadcast(
        self,
        atask: ATask[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        call_id: str | None = None,
    ) -> str:
        """Run ``atask(*args, **kwargs)`` on every server that serves it right now, each its own
        copy, without replies; return its call id once the transport accepted it. Raises
        ``JobNotFound`` when no server serves it."""
        return await self._one_way(atask, args, kwargs, call_id, broadcast=True)

    async def _one_way(
        self,
        atask: ATask[Any, Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call_id: str | None,
        *,
        broadcast: bool,
    ) -> str:
        codec = self.codec
        transport = self.transport
        if transport.classic:
            raise ConfigurationError(
                f"{transport!r} is written to the 2019 interface, which has no "
                f"{'broadcast' if broadcast else 'fire-and-forget'} requests"
            )
        if self._registering:
            await asyncio.wait(set(self._registering))
        scope = current_scope.get()
        call_id = call_id if call_id is not None else new_call_id()
        parent_id = scope.call_id if scope is not None else None
        tracing = _tracing_in_force()
        span = (
            tracing.client(transport, self.namespace, atask.name, call_id, parent_id)
            if tracing is not None
            else None
        )
        try:
            body = await encode(codec, _payload(atask, args, kwargs, call_id))
            request = self._request(atask, codec, body, call_id, parent_id, None, False)
            if span is not None:
                assert tracing is not None
                tracing.inject(span, request)
            if broadcast:
                await transport.broadcast(request)
            else:
                await transport.enqueue(request)
            return call_id
        except BaseException as exc:
            if span is not None:
                assert tracing is not None
                tracing.failed(span, exc)
            raise
        finally:
            if span is not None:
                span.end()

    async def _outcome(self, reply: Reply, codec: Codec) -> Any:
        if reply.ok:
            if reply.content_type != codec.content_type:
                raise NoCodecRegistered(
                    f"reply is {reply.content_type!r} but this side's codec is "
                    f"{codec.content_type!r}: configure the same codec on clients and servers"
                )
            return await decode(codec, reply.body)
        raise await _rebuild_exception(reply, codec)

    async def firing(self, atask: ATask[Any, Any], call_id: str) -> Request:
        """The request of a scheduled run of ``atask``: no arguments, no parent, no deadline
        (the atask's ``timeout`` counts from when a server starts it)."""
        codec = self.codec
        body = await encode(codec, _payload(atask, (), {}, call_id))
        return self._request(atask, codec, body, call_id, None, None, False)

    # --- serve side ----------------------------------------------------------------------

    async def activate(
        self,
        transport: Transport | None = None,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
        processes: int | None = None,
    ) -> None:
        """Serve every atask registered in this namespace through ``transport``, and those
        registered later (imported after this call) as they come.

        At most ``concurrency`` atasks run at once; one awaiting other atasks does not count.
        ``mechanism="process"`` atasks run in at most ``processes`` worker processes (default:
        one per CPU), started when first needed. Activating again with the same transport does
        nothing; with another one, the router stops serving through the first (as in 2019).
        """
        transport = modern(transport if transport is not None else self.transport)
        if self._serving is transport:
            return
        if self._serving is not None:
            log.info("%r: switching from %r to %r", self, self._serving, transport)
            await self.deactivate()
        if processes is not None and processes < 1:
            raise ConfigurationError(f"processes must be at least 1, not {processes}")
        self._processes = processes
        slots = Slots(concurrency)
        transport.set_capacity(slots)
        self._slots = slots
        self._serving = transport
        self._loop = asyncio.get_running_loop()
        self._started_at = time.time()
        transport.server_statistics = lambda: self.statistics().as_dict()
        self._check_codec(self.serving or transport)
        ns = namespace(self.namespace)
        self._served = []
        ns.on_atask.append(self._on_new_atask)
        try:
            for name in list(ns.atasks):
                if name not in self._served:
                    self._served.append(name)
                    await transport.register_callback(name, self.handle)
            if ns.schedules:
                await self._start_scheduler(transport)
        except BaseException:
            await self.deactivate(0)
            raise
        log.info(
            "serving %d atasks of namespace %r (concurrency %d)",
            len(self._served),
            self.namespace,
            concurrency,
        )

    async def activate_queue(self, name: str, transport: Transport | None = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    async def activate_broadcast(self, name: str, transport: Transport | None = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    def _registered(self, name: str) -> None:
        if name not in namespace(self.namespace).atasks:
            raise JobNotFound(
                f"no atask {name!r} is registered in namespace {self.namespace!r}: import the "
                "module that defines it first"
            )

    async def deactivate(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop taking requests, let those in progress finish within ``grace`` seconds, and hand
        the rest back to the transport. Idempotent."""
        transport, self._serving = self._serving, None
        if transport is None:
            return
        with contextlib.suppress(ValueError):
            namespace(self.namespace).on_atask.remove(self._on_new_atask)
        try:
            scheduler, self._scheduler = self._scheduler, None
            if scheduler is not None:
                await scheduler.stop()  # first: another server takes the role over at once
            if self._registering:
                await asyncio.wait(set(self._registering))
            for name in self._served:
                await transport.unregister_callback(name)
        finally:
            try:
                await transport.drain(grace)
            finally:
                pool, self._pool = self._pool, None
                if pool is not None:
                    await pool.close()

    async def _start_scheduler(self, transport: Transport) -> None:
        """Compete for the namespace's scheduler role, where the transport has one."""
        from atasks.schedules.scheduler import Scheduler

        seat = transport.scheduler_seat()
        if seat is None:
            log.warning(
                "%r cannot hold a scheduler role: the schedules of namespace %r do not run here",
                transport,
                self.namespace,
            )
            return
        self._scheduler = Scheduler(self, transport, seat)
        self._scheduler.start()

    @property
    def serving(self) -> Transport | None:
        """The transport this router serves through (a 2019-style one, not its adapter)."""
        serving = self._serving
        return serving.inner if isinstance(serving, ClassicAdapter) else serving

    def _on_new_atask(self, atask: ATask[Any, Any]) -> None:
        """An atask was registered while this router serves: serve it too. Any thread."""
        loop = self._loop
        if self._serving is None or loop is None or loop.is_closed():
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._register_soon(atask.name)
        else:
            loop.call_soon_threadsafe(self._register_soon, atask.name)

    def _register_soon(self, name: str) -> None:
        transport = self._serving
        if transport is None or name in self._served:
            return
        self._served.append(name)
        task = asyncio.get_running_loop().create_task(
            transport.register_callback(name, self.handle)
        )
        self._registering.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self._registering.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("could not serve atask %r: %s", name, task.exception())

        task.add_done_callback(done)

    def _check_codec(self, transport: Transport) -> None:
        """Say at start what would otherwise surprise: no codec, or unsigned pickle on a broker."""
        global _unsigned_pickle_warned
        try:
            codec = self.codec
        except NoCodecRegistered:
            log.warning(
                "%r serves without a codec: every request is answered with NoCodecRegistered "
                "until one is installed (e.g. PickleCodec(%r))",
                self,
                self.namespace,
            )
            return
        if (
            isinstance(codec, PickleCodec)
            and not codec.signed
            and not transport.in_process
            and not _unsigned_pickle_warned
        ):
            _unsigned_pickle_warned = True
            log.warning(
                "serving unsigned pickle through %r: anyone who can publish to the broker can "
                "run code in this process. Sign it with PickleCodec(key=...) or ATASKS_SECRET "
                "on every client and server, or use JSONCodec.",
                transport,
            )

    def statistics(self) -> RouterStatistics:
        slots = self._slots
        return RouterStatistics(
            namespace=self.namespace,
            atasks=tuple(self._served),
            concurrency=slots.limit if slots else 0,
            running=slots.running if slots else 0,
            parked=slots.parked if slots else 0,
            waiting=slots.waiting if slots else 0,
            succeeded=self._succeeded,
            failed=self._failed,
            retried=self._retried,
            cancelled=self._cancelled,
            started_at=self._started_at,
            **(self._scheduler.statistics() if self._scheduler is not None else {}),
        )

    async def handle(self, request: Request) -> Reply:
        """Serve one request. Returns a reply for every outcome; only cancellation propagates."""
        serving = self._serving
        events = serving if serving is not None and serving.events_enabled else None
        received = time.monotonic() if events is not None else 0.0  # only events tell durations
        served: Served | None = None
        try:
            tracing = _tracing.active
            if tracing is None and _OTEL in _modules:
                tracing = _tracing_in_force()
            if tracing is not None:
                served = tracing.server(serving, self.namespace, request)
            if events is not None:
                await self._emit(events, "received", request)
            codec: Codec | None = None
            try:
                codec = self._codec or self._ns.codec or self.codec
                atask = self._served_atask(request, codec)
                # The auth context is verified before anything is decoded.
                verified = (
                    await admit(atask, request, codec)
                    if request.headers or atask.auth_required
                    else None
                )
                payload = (
                    decode_now(codec, request.body)
                    if codec._fast_decode
                    else await decode(codec, request.body)
                )
                args, kwargs, values = _split_arguments(payload, request)
            except (JobNotFound, NoCodecRegistered, DecodeError, AuthError) as exc:
                log.warning("refused request %s for %r: %s", request.call_id, request.name, exc)
                return await self._failed_with(request, codec, exc, events, received, served)
            if request.deadline is None and atask.timeout is not None:
                # Fire and forget (or a 2019 transport): the timeout counts from here.
                request.deadline = time.time() + atask.timeout
            try:
                if atask.retry is None:
                    result = await self._run(atask, request, args, kwargs, values, verified, events)
                else:
                    result = await self._retrying(
                        atask, request, args, kwargs, values, verified, events, served
                    )
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and not task.cancelling():
                    # Raised by the atask itself (say, awaiting a task someone else cancelled):
                    # an outcome like any exception, not a cancellation of this call.
                    stray = RuntimeError(f"atask {request.name!r} raised CancelledError")
                    stray.__cause__ = exc
                    return await self._failed_with(request, codec, stray, events, received, served)
                self._cancelled += 1
                if served is not None:
                    served.failed(exc)
                if events is not None:
                    await self._emit(events, "cancelled", request, received)
                raise
            except Exception as exc:
                return await self._failed_with(request, codec, exc, events, received, served)
            try:
                body = (
                    encode_now(codec, result) if codec._fast_encode else await encode(codec, result)
                )
            except EncodeError as exc:
                failure = EncodeError(f"the result of atask {request.name!r} cannot travel: {exc}")
                log.warning("call %s of %r: %s", request.call_id, request.name, failure)
                return await self._failed_with(request, codec, failure, events, received, served)
            self._succeeded += 1
            if events is not None:
                await self._emit(events, "succeeded", request, received)
            return Reply(
                call_id=request.call_id, ok=True, content_type=codec.content_type, body=body
            )
        finally:
            if served is not None:
                served.end()
            if request.slot_taken:  # taken by the transport, never adopted by a call
                request.slot_taken = False
                if self._slots is not None:
                    self._slots.give_back_untaken()

    async def _failed_with(
        self,
        request: Request,
        codec: Codec | None,
        exc: Exception,
        events: Transport | None,
        received: float,
        served: Served | None,
    ) -> Reply:
        self._failed += 1
        if served is not None:
            served.failed(exc)
        reply = await _failure(request, codec, exc)
        if events is not None:
            error = f"{reply.error_type}: {reply.error_message}"
            await self._emit(events, "failed", request, received, error=error)
        return reply

    async def _emit(
        self,
        events: Transport,
        kind: str,
        request: Request,
        received: float | None = None,
        *,
        error: str | None = None,
        progress: Progress | None = None,
        attempt: int | None = None,
        delay: float | None = None,
    ) -> None:
        event = Event(
            kind=kind,
            atask=request.name,
            call_id=request.call_id,
            parent_id=request.parent_id,
            namespace=self.namespace,
            duration=time.monotonic() - received if received is not None else None,
            error=error,
            progress=(
                {"done": progress.done, "total": progress.total, "note": progress.note}
                if progress is not None
                else None
            ),
            attempt=attempt,
            delay=delay,
        )
        try:
            await events.publish_event(event)
        except Exception as exc:  # events are best effort: never fail a call for one
            log.debug("could not publish %s event of %s: %s", kind, request.call_id, exc)

    def _served_atask(self, request: Request, codec: Codec) -> ATask[Any, Any]:
        """The atask a request calls, once this server serves it and speaks its codec."""
        atask = self._ns.atasks.get(request.name)
        if atask is None:
            raise JobNotFound(
                f"this server does not serve atask {request.name!r} in namespace {self.namespace!r}"
            )
        if request.content_type != codec.content_type:
            raise NoCodecRegistered(
                f"request is {request.content_type!r} but this server's codec is "
                f"{codec.content_type!r}: configure the same codec (and key) everywhere"
            )
        return atask

    async def _run(
        self,
        atask: ATask[Any, Any],
        request: Request,
        args: list[Any],
        kwargs: dict[str, Any],
        values: dict[str, Any] | None,
        verified: AuthContext | None,
        events: Transport | None,
    ) -> Any:
        deadline = request.deadline
        if deadline is not None and deadline <= time.time():
            raise TimeoutError(f"atask {request.name!r} reached its deadline before it started")
        slots = self._slots
        scope = CallScope(
            request.call_id, request.name, deadline, slots, request.parent_id, request.headers
        )
        scope.owner = asyncio.current_task()
        caller = request.emit if request.wants_progress else None
        if events is not None or caller is not None:
            scope.report = self._reporter(request, caller, events)
        token = current_scope.set(scope)
        # The priority it arrived with, inherited by the calls it makes.
        priority_token = enter_priority(request.priority) if request.priority is not None else None
        # What the caller's context carried, in force while the atask runs (and so in the calls
        # it makes); undone after, for transports that serve in a context of their own.
        restoring = apply(values) if values else None
        # Only what the request carries: a server's own context (over AMQP, copied from
        # whoever opened the connection) must never lend its auth to a call.
        auth_token = (
            auth_var.set(verified) if verified is not None or auth_var.get() is not None else None
        )
        try:
            if slots is not None:
                if request.slot_taken:
                    request.slot_taken = False
                    scope.holds_slot = True
                elif not slots.take_now(scope):
                    await slots.take(scope)
            if events is not None:
                await self._emit(events, "started", request)
            running: Coroutine[Any, Any, Any]
            if atask.streams:
                running = serve_items(atask, request, args, kwargs, self.codec)
            elif atask.mechanism == "async":  # its coroutine, without one around it
                called = atask.fn(*args, **kwargs)
                running = called if type(called) is CoroutineType else _awaited(called)
            elif atask.mechanism == "process":
                running = self._process_pool().run(atask.fn, args, kwargs)
            else:
                running = atask.run(args, kwargs)
            work = slots.drive(running, scope) if slots is not None else running
            if deadline is None:
                return await work
            loop = asyncio.get_running_loop()
            async with asyncio.timeout_at(loop.time() + deadline - time.time()):
                return await work
        finally:
            if slots is not None:
                slots.finish(scope)
            if auth_token is not None:
                auth_var.reset(auth_token)
            if restoring:
                restore(restoring)
            if priority_token is not None:
                leave_priority(priority_token)
            current_scope.reset(token)

    async def _retrying(
        self,
        atask: ATask[Any, Any],
        request: Request,
        args: list[Any],
        kwargs: dict[str, Any],
        values: dict[str, Any] | None,
        verified: AuthContext | None,
        events: Transport | None,
        served: Served | None,
    ) -> Any:
        """``_run`` until an attempt succeeds or ``atask.retry`` allows no more, within the
        call's deadline. Waiting for the next attempt, the call holds no slot."""
        retry = atask.retry
        assert retry is not None
        deadline = request.deadline
        attempt = 1
        while True:
            try:
                return await self._run(atask, request, args, kwargs, values, verified, events)
            except Exception as exc:
                delay = retry.delay_after(attempt, exc)
                if delay is None:
                    why = (
                        "no attempts left"
                        if attempt >= retry.attempts
                        else f"{type(exc).__name__} is not retried"
                    )
                    give_up(exc, attempt, retry, why)
                    raise
                if math.isinf(delay):  # an exponential backoff without a ceiling, grown past floats
                    give_up(exc, attempt, retry, "the next attempt would never start")
                    raise
                if deadline is not None and time.time() + delay >= deadline:
                    give_up(
                        exc,
                        attempt,
                        retry,
                        f"the next attempt, in {delay:.3g}s, would start after the deadline",
                    )
                    raise
                attempt += 1
                self._retried += 1
                error = f"{type_name(exc)}: {_message(exc)}"
                log.info(
                    "call %s of %r failed (%s); attempt %d in %.3gs",
                    request.call_id,
                    request.name,
                    error,
                    attempt,
                    delay,
                )
                if served is not None:
                    served.retrying(attempt, delay, exc)
                if events is not None:
                    await self._emit(
                        events, "retrying", request, error=error, attempt=attempt, delay=delay
                    )
            await asyncio.sleep(delay)  # before the deadline, checked above; holding no slot

    def _process_pool(self) -> ProcessPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = ProcessPool(self._processes or os.cpu_count() or 1)
        return pool

    def _reporter(
        self, request: Request, caller: ProgressSink | None, events: Transport | None
    ) -> ProgressSink:
        async def report(progress: Progress) -> None:
            if events is not None:
                await self._emit(events, "progress", request, progress=progress)
            if caller is not None:
                await caller(progress)

        return report


def _tracing_in_force() -> Tracing | None:
    """The tracing in force: looked for on each call once OpenTelemetry is imported and until
    it is configured, so a call costs nothing for it before that."""
    tracing = _tracing.active
    if tracing is None and _OTEL in _modules:
        tracing = _tracing.detect()
    return tracing


def get_router(namespace_name: str = DEFAULT) -> Router:
    """The router of a namespace, created on first use."""
    router = namespace(namespace_name).router
    return router if router is not None else Router(namespace=namespace_name)


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def _payload(
    atask: ATask[Any, Any], args: tuple[Any, ...], kwargs: dict[str, Any], call_id: str
) -> list[Any]:
    """What a request's body encodes: ``[args, kwargs, atask name, call id]``, plus the values
    of the propagated context variables set here, if any."""
    payload = [list(args), kwargs, atask.name, call_id]
    if propagated:
        values = capture()
        if values:
            payload.append(values)
    return payload


def _split_arguments(
    payload: Any, request: Request
) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    """The arguments and context values in a request's payload, ``[args, kwargs, atask name,
    call id]`` plus ``{name: value}`` of propagated variables when the caller had any set, once
    the name and id are those the request arrived with: a (signed) request replayed into
    another atask's queue, or under another call id, is refused."""
    if (  # the common shape, checked at a glance: positional arguments, no context values
        type(payload) is list
        and len(payload) == 4
        and type(payload[0]) is list
        and not payload[1]
        and type(payload[1]) is dict
        and payload[2] == request.name
        and payload[3] == request.call_id
    ):
        return payload[0], payload[1], None
    if not (
        isinstance(payload, list | tuple)
        and len(payload) in (4, 5)
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and all(isinstance(key, str) for key in payload[1])
        and (len(payload) == 4 or _is_values(payload[4]))
    ):
        raise DecodeError(
            "a request must carry [args, kwargs, atask name, call id] and maybe {name: value} "
            f"of context variables, not {_shape(payload)}"
        )
    if len(payload) == 4:
        args, kwargs, name, call_id = payload
        values = None
    else:
        args, kwargs, name, call_id, values = payload
    if name != request.name or call_id != request.call_id:
        raise DecodeError(
            f"refused: the payload was made for atask {name!r} call {call_id!r} but arrived "
            f"as atask {request.name!r} call {request.call_id!r} (replayed or misrouted)"
        )
    return list(args), kwargs, values


def _is_values(values: Any) -> bool:
    return isinstance(values, dict) and all(isinstance(key, str) for key in values)


def _shape(payload: Any) -> str:
    if isinstance(payload, list | tuple):
        return f"a {type(payload).__name__} of {len(payload)}"
    return type(payload).__name__


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the reply
        return f"<unprintable {type(exc).__name__}>"


async def _failure(request: Request, codec: Codec | None, exc: Exception) -> Reply:
    message = _message(exc)
    body = b""
    if codec is not None and request.content_type == codec.content_type:
        try:
            body = await encode(codec, exc)
            await decode(codec, body)  # some exceptions pickle but fail to unpickle
        except CodecError:
            body = b""
    log.debug("atask %r failed: %s: %s", request.name, type_name(exc), message)
    return Reply(
        call_id=request.call_id,
        ok=False,
        content_type=codec.content_type if codec is not None else "",
        body=body,
        error_type=type_name(exc),
        error_message=message[:MESSAGE_LIMIT],
        traceback="".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:],
    )


async def _rebuild_exception(reply: Reply, codec: Codec) -> BaseException:
    """The exception a failed reply describes, as close to the original as this side can get."""
    exc: BaseException | None = None
    if reply.body and reply.content_type == codec.content_type:
        try:
            decoded = await decode(codec, reply.body)
        except DecodeError:
            decoded = None
        if isinstance(decoded, BaseException):
            exc = decoded
    if exc is None:
        exc = exception_from_name(reply.error_type, reply.error_message, reply.traceback)
    if reply.traceback:
        remote = reply.traceback.rstrip("\n")
        exc.add_note(f"Remote traceback, from the server that ran the atask:\n{remote}")
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            exc.remote_traceback = reply.traceback  # type: ignore[attr-defined]
    return exc


def exception_from_name(name: str, message: str, remote_traceback: str = "") -> BaseException:
    """Rebuild a builtin or atasks exception by name; anything else becomes ``RemoteError``."""
    module, _, qualname = name.rpartition(".")
    owner = {"builtins": builtins, "atasks.errors": errors}.get(module)
    cls = getattr(owner, qualname, None) if owner is not None else None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not RemoteError:
        try:
            return cls(message)
        except Exception:
            pass
    return RemoteError(name, message, remote_traceback)
