"""The serving side of a router: a request is admitted (its atask known, its codec spoken, its
auth context verified), decoded into a ``Call``, run through the namespace's serve-side
middlewares and the atask, and its outcome encoded into a reply.

Serve side: Request → codec → middlewares → atask(*args) → codec → Reply. Every outcome is a
reply; only a cancellation of the call propagates.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from collections.abc import Awaitable, Coroutine, Sequence
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any

from atasks import tracing as _tracing
from atasks.auth_context import admit, auth_var
from atasks.call_side import Routing, tracing_in_force
from atasks.calls import CallScope, ProgressSink, current_scope, enter_priority, leave_priority
from atasks.codecs.base import Codec, decode, encode
from atasks.delays import NOT_BEFORE, NotBefore
from atasks.errors import AuthError, DecodeError, EncodeError, JobNotFound, NoCodecRegistered
from atasks.middleware import Call, Middleware, Proceed, chain, overrides
from atasks.middlewares.auth import InForce
from atasks.middlewares.events import Events
from atasks.middlewares.limits import FleetLimit
from atasks.middlewares.propagation import Apply
from atasks.middlewares.retries import Retries
from atasks.middlewares.tracing import ServerSpans
from atasks.outcomes import describe, failure
from atasks.payload import split_arguments
from atasks.processes import ProcessPool
from atasks.slots import NOT_TAKEN, Slots
from atasks.streams import serve_items
from atasks.transport.contract import Transport
from atasks.transport.messages import Reply, Request

if TYPE_CHECKING:
    from atasks.calls import Progress
    from atasks.otel import Tracing

log = logging.getLogger("atasks.router")

_IN_FORCE, _APPLY = InForce(), Apply()


@dataclass(slots=True)
class Counts:
    """How the calls a router served ended, over all its activations."""

    succeeded: int = 0
    failed: int = 0
    retried: int = 0  # attempts made again by ``@atask(retry=...)``
    cancelled: int = 0


class Serving:
    """Serves the requests of one router while it is active: its slots, its process pool, its
    serve-side chains and its counts."""

    def __init__(
        self,
        router: Routing,
        transport: Transport,
        slots: Slots,
        processes: int | None,
        middleware: list[Middleware],
        counts: Counts,
    ) -> None:
        self.router = router
        self.transport = transport
        self.slots = slots
        self.middleware = middleware
        self._processes = processes
        self._pool: ProcessPool | None = None
        self._events = Events(transport, router.namespace) if transport.events_enabled else None
        self._chains: dict[tuple[Any, int], tuple[Proceed, bool]] = {}
        self._tracing: Tracing | None = None
        self.plain = self._events is None and not any(overrides(m, "serve") for m in middleware)
        """Whether a call needs no chain unless its context or atask asks for one."""
        self.counts = counts
        self.started_at = time.time()

    def forget_chains(self) -> None:
        """Build every chain again on its next call (the middlewares changed)."""
        self._chains.clear()
        self.plain = self._events is None and not any(
            overrides(m, "serve") for m in self.middleware
        )

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _chain(self, atask: Any, flags: int, tracing: Tracing | None) -> tuple[Proceed, bool]:
        """The chain of ``atask``'s calls, and whether it returns the result encoded."""
        if tracing is not self._tracing:
            self._chains.clear()
            self._tracing = tracing
        key = (atask, flags)
        found = self._chains.get(key)
        if found is None:
            found = self._chains[key] = self._build(atask, flags, tracing)
        return found

    def _build(self, atask: Any, flags: int, tracing: Tracing | None) -> tuple[Proceed, bool]:
        inner: list[Middleware] = []
        if flags & 1:
            inner.append(_IN_FORCE)
        if flags & 2:
            inner.append(_APPLY)
        if flags & 4:
            inner.append(NotBefore(self.slots))
        inner += self.middleware
        if atask.retry is not None:
            inner.append(Retries(atask.retry, self._count_retry))
        if atask.limit is not None or atask.rate is not None:
            inner.append(FleetLimit(atask, self.transport, self.slots))
        proceed = chain(inner, "serve", self._run)
        outer: list[Middleware] = []
        if tracing is not None:
            outer.append(ServerSpans(tracing, self.router.serving))
        if self._events is not None:
            outer.append(self._events)
        if not outer:
            return proceed, False

        async def encoded(call: Call) -> bytes:
            # Inside the observers, so that they see an unencodable result fail, as the caller.
            return await _encoded(call.request, call.codec, await proceed(call))

        return chain(outer, "serve", encoded), True

    def _count_retry(self) -> None:
        self.counts.retried += 1

    async def handle(self, request: Request) -> Reply:
        """Serve one request. Returns a reply for every outcome; only cancellation propagates."""
        router = self.router
        events = self._events
        received = time.monotonic() if events is not None else 0.0
        try:
            tracing = _tracing.active
            if tracing is None and _tracing.OTEL_MODULE in sys.modules:
                tracing = tracing_in_force()
            if events is not None:
                await events.publish("received", request)
            codec: Codec | None = None
            try:
                codec = router.given_codec or router.ns.codec or router.codec
                atask = router.served_atask(request, codec)
                # The auth context is verified before anything is decoded.
                verified = (
                    await admit(atask.auth_required, request, codec)
                    if request.headers or atask.auth_required
                    else None
                )
                payload = (
                    codec._decode_now(request.body)
                    if codec._fast_decode
                    else await decode(codec, request.body)
                )
                args, kwargs, values = split_arguments(payload, request)
            except (JobNotFound, NoCodecRegistered, DecodeError, AuthError) as exc:
                log.warning("refused request %s for %r: %s", request.call_id, request.name, exc)
                if tracing is not None:
                    ServerSpans(tracing, router.serving).refused(router.namespace, request, exc)
                return await self._failed(request, codec, exc, received, refused=True)
            if request.deadline is None and atask.timeout is not None:
                # Fire and forget (or a 2019 transport): the timeout counts from here.
                request.deadline = time.time() + atask.timeout
            flags = (1 if verified is not None or auth_var.get() is not None else 0) | (
                2 if values else 0
            )
            if request.headers and NOT_BEFORE in request.headers:
                flags |= 4
            encoded = False
            try:
                if self.plain and not flags and tracing is None and atask.unwrapped:
                    result = await self._execute(request, atask, args, kwargs, None)
                else:
                    proceed, encoded = self._chain(atask, flags, tracing)
                    call = Call(
                        atask,
                        request.call_id,
                        args,
                        kwargs,
                        router.namespace,
                        request.parent_id,
                        request.deadline,
                        request.headers,
                    )
                    call.request, call.codec, call.values = request, codec, values
                    call.auth = verified
                    result = await proceed(call)
                if encoded:
                    body = result
                elif codec._fast_encode:
                    try:
                        body = codec._encode_now(result)
                    except EncodeError as exc:
                        raise _cannot_travel(request, exc) from exc
                else:
                    body = await _encoded(request, codec, result)
            except asyncio.CancelledError:
                self.counts.cancelled += 1
                raise
            except Exception as exc:
                return await self._failed(
                    request, codec, exc, received, observed=encoded, expected=atask.throws
                )
            self.counts.succeeded += 1
            return Reply(request.call_id, True, codec.content_type, body)  # see Request
        finally:
            if request.slot_taken:  # taken by the transport, never adopted by a call
                request.slot_taken = False
                self.slots.give_back_untaken()

    async def _failed(
        self,
        request: Request,
        codec: Codec | None,
        exc: Exception,
        received: float,
        *,
        observed: bool = False,
        refused: bool = False,
        expected: tuple[type[Exception], ...] = (),
    ) -> Reply:
        """The failed reply of ``request``; ``observed``: the events were published already;
        ``refused``: it never ran (logged as a warning already). A call that ran and failed,
        after its retries, is logged here at ERROR with its traceback: the one line of it; at
        INFO, without it, if the exception is one its atask ``expected`` (``throws``)."""
        self.counts.failed += 1
        if isinstance(exc, expected):
            log.info("call %s of %r raised %s", request.call_id, request.name, describe(exc))
        elif not refused:
            log.error(
                "call %s of %r failed: %s",
                request.call_id,
                request.name,
                describe(exc),
                exc_info=exc,
            )
        reply = await failure(request, codec, exc)
        events = self._events
        if events is not None and not observed:
            await events.publish("failed", request, received, error=describe(exc))
        return reply

    def _run(self, call: Call) -> Coroutine[Any, Any, Any]:
        """The innermost step of a chain."""
        return self._execute(call.request, call.definition, call.args, call.kwargs, call.events)

    async def _execute(
        self,
        request: Request,
        atask: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        events: Events | None,
    ) -> Any:
        """Run the atask in a slot, within its deadline."""
        deadline = request.deadline
        if deadline is not None and deadline <= time.time():
            raise TimeoutError(f"atask {request.name!r} reached its deadline before it started")
        slots = self.slots
        scope = CallScope(
            request.call_id, request.name, deadline, slots, request.parent_id, request.headers
        )
        caller = request.emit if request.wants_progress else None
        if events is not None or caller is not None:
            scope.report = _reporter(request, caller, events)
        token = current_scope.set(scope)
        # The priority it arrived with, inherited by the calls it makes.
        priority_token = enter_priority(request.priority) if request.priority is not None else None
        try:
            if request.slot_taken:
                request.slot_taken = False
                scope.holds_slot = True
            elif not slots.take_now(scope):
                await slots.take(scope)
            if events is not None:
                await events.publish("started", request)
            running: Coroutine[Any, Any, Any]
            first = NOT_TAKEN
            if atask.streams:
                running = serve_items(atask, request, args, kwargs, self.router.codec)
            elif atask.mechanism == "async":  # its coroutine, without one around it
                called = atask.fn(*args, **kwargs)
                running = called if type(called) is CoroutineType else _awaited(called)
                if deadline is None:  # its first step now: most atasks end in it
                    try:
                        first = running.send(None)
                    except StopIteration as stop:
                        return stop.value
            elif atask.mechanism == "process":
                running = self._process_pool().run(atask.fn, args, kwargs)
            else:
                running = atask.run(args, kwargs)
            if scope.owner is None:  # else taken by a call its first step made (call_started)
                scope.owner = asyncio.current_task()
            work = slots.drive(running, scope, first)
            if deadline is None:
                return await work
            loop = asyncio.get_running_loop()
            async with asyncio.timeout_at(loop.time() + deadline - time.time()):
                return await work
        except asyncio.CancelledError as exc:
            task = asyncio.current_task()
            if task is not None and not task.cancelling():
                # Raised by the atask itself (say, awaiting a task someone else cancelled):
                # an outcome like any exception, not a cancellation of this call.
                raise RuntimeError(f"atask {request.name!r} raised CancelledError") from exc
            raise
        finally:
            slots.finish(scope)
            if priority_token is not None:
                leave_priority(priority_token)
            current_scope.reset(token)

    def _process_pool(self) -> ProcessPool:
        pool = self._pool
        if pool is None:
            pool = self._pool = ProcessPool(self._processes or os.cpu_count() or 1)
        return pool


async def _encoded(request: Request, codec: Codec, result: Any) -> bytes:
    try:
        return codec._encode_now(result) if codec._fast_encode else await encode(codec, result)
    except EncodeError as exc:
        raise _cannot_travel(request, exc) from exc


def _cannot_travel(request: Request, exc: EncodeError) -> EncodeError:
    # Not logged here: the call fails with it, and its failure is logged once.
    return EncodeError(f"the result of atask {request.name!r} cannot travel: {exc}")


def _reporter(request: Request, caller: ProgressSink | None, events: Events | None) -> ProgressSink:
    async def report(progress: Progress) -> None:
        if events is not None:
            await events.publish("progress", request, progress=progress)
        if caller is not None:
            await caller(progress)

    return report


async def _awaited(awaitable: Awaitable[Any]) -> Any:
    return await awaitable
