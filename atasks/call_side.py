"""The calling side of a router: an atask awaited here becomes a ``Call``, goes through the
namespace's call-side middlewares, and is encoded into a request, sent, and its reply decoded.

Call side: args → middlewares → codec → Request → transport → Reply → codec → value or raised
exception.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Coroutine, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol

from atasks import tracing as _tracing
from atasks.auth_context import AuthContext, auth_var, stamp
from atasks.calls import current_scope, effective_priority, new_call_id, scope_deadline
from atasks.codecs.base import Codec, decode, encode
from atasks.compat import modern
from atasks.delays import Delay, not_before_var
from atasks.errors import ConfigurationError, NoCodecRegistered
from atasks.events import ProgressRelay, progress_listener
from atasks.middleware import Call, Middleware, Proceed, chain, overrides
from atasks.middlewares.auth import Stamp
from atasks.middlewares.propagation import Capture
from atasks.middlewares.tracing import ClientSpans
from atasks.outcomes import rebuild_exception
from atasks.payload import pack_arguments
from atasks.propagation import propagated
from atasks.transport.contract import Transport
from atasks.transport.messages import NO_HEADERS, FrameListener, Reply, Request

if TYPE_CHECKING:
    from atasks.namespaces import Namespace
    from atasks.otel import Tracing
    from atasks.streams import Received

_OTEL, _modules = _tracing.OTEL_MODULE, sys.modules  # read on every call: tracing set up yet?

Kind = Literal["call", "queue", "broadcast"]
_CAPTURE, _STAMP, _DELAY = Capture(), Stamp(), Delay()


class Routing(Protocol):
    """The router whose calls are made and served (``atasks.router.Router``)."""

    namespace: str
    ns: Namespace
    given_codec: Codec | None
    given_transport: Transport | None
    registering: set[asyncio.Task[None]]

    @property
    def codec(self) -> Codec: ...

    @property
    def transport(self) -> Transport: ...

    @property
    def serving(self) -> Transport | None: ...

    def served_atask(self, request: Request, codec: Codec) -> Any: ...


def tracing_in_force() -> Tracing | None:
    """The tracing in force: looked for on each call once OpenTelemetry is imported and until
    it is configured, so a call costs nothing for it before that."""
    tracing = _tracing.active
    if tracing is None and _OTEL in _modules:
        tracing = _tracing.detect()
    return tracing


class Caller:
    """Makes the calls of one router; keeps its call-side chains, built when first needed."""

    def __init__(self, router: Routing) -> None:
        self.router = router
        self.middleware: list[Middleware] = []
        self.wraps = False
        """Whether a middleware of the user's has a call side."""
        self._chains: dict[tuple[Any, Kind, int], Proceed] = {}
        self._tracing: Tracing | None = None
        self._innermost: dict[Kind, Proceed] = {
            "call": self._send,
            "queue": self._enqueue,
            "broadcast": self._broadcast,
        }

    def forget_chains(self) -> None:
        """Build every chain again on its next call (the middlewares changed)."""
        self._chains.clear()
        self.wraps = any(overrides(one, "call") for one in self.middleware)

    def _chain(self, atask: Any, kind: Kind, tracing: Tracing | None) -> Proceed | None:
        """The chain of ``atask``'s calls of ``kind`` in the context in force; ``None`` when no
        middleware has anything to do (the common case, which then costs nothing more)."""
        flags = (
            (1 if propagated else 0)
            | (2 if auth_var.get() is not None else 0)
            | (4 if not_before_var.get() is not None else 0)
        )
        if not flags and tracing is None and not self.wraps:
            return None
        if tracing is not self._tracing:
            self._chains.clear()
            self._tracing = tracing
        key = (atask, kind, flags)
        found = self._chains.get(key)
        if found is None:
            found = self._chains[key] = self._build(kind, flags, tracing)
        return found

    def _build(self, kind: Kind, flags: int, tracing: Tracing | None) -> Proceed:
        middlewares: list[Middleware] = [] if tracing is None else [ClientSpans(tracing)]
        middlewares += self.middleware
        if flags & 4:
            middlewares.append(_DELAY)
        if flags & 1:
            middlewares.append(_CAPTURE)
        if flags & 2:
            middlewares.append(_STAMP)
        return chain(middlewares, "call", self._innermost[kind])

    def _route(
        self, atask: Any, kind: Kind, stream: Received | None = None
    ) -> tuple[Codec, Transport]:
        router = self.router
        ns = router.ns
        codec = router.given_codec or ns.codec or router.codec  # the property raises for none
        transport = router.given_transport or ns.transport or router.transport
        if transport.classic:
            if kind != "call":
                raise ConfigurationError(
                    f"{transport!r} is written to the 2019 interface, which has no "
                    f"{'broadcast' if kind == 'broadcast' else 'fire-and-forget'} requests"
                )
            transport = modern(transport)
        if stream is not None and not transport.streams:
            raise ConfigurationError(
                f"atask {atask.name!r} is a stream, and {transport!r} does not carry streams"
            )
        return codec, transport

    async def call(
        self,
        atask: Any,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        stream: Received | None,
        given: Call | None = None,
    ) -> Any:
        """Run ``atask(*args, **kwargs)`` on a server and return its result; ``given``: the
        call as the middlewares passed it on (the innermost step of its chain)."""
        values: dict[str, Any] | None = None
        auth: AuthContext | None = None
        headers: Mapping[str, str] = NO_HEADERS
        if given is None:
            router = self.router
            ns = router.ns
            codec = router.given_codec or ns.codec or router.codec  # the property raises for none
            transport = router.given_transport or ns.transport or router.transport
            if transport.classic or stream is not None:
                codec, transport = self._route(atask, "call", stream)
            if router.registering:  # an atask imported since activate(): served once registered
                await asyncio.wait(set(router.registering))
            scope = current_scope.get()
            call_id = new_call_id()
            parent_id = scope.call_id if scope is not None else None
            deadline = scope_deadline(scope, atask.timeout)
            tracing = _tracing.active
            if tracing is None and _OTEL in _modules:
                tracing = _tracing.detect()
            if (
                tracing is not None
                or self.wraps
                or propagated
                or auth_var.get() is not None
                or not_before_var.get() is not None
            ):
                proceed = self._chain(atask, "call", tracing)
                assert proceed is not None
                call = Call(atask, call_id, args, kwargs, router.namespace, parent_id, deadline)
                call.codec, call.transport, call.scope, call.stream = (
                    codec,
                    transport,
                    scope,
                    stream,
                )
                return await proceed(call)
        else:
            atask, call_id, args, kwargs = given.definition, given.call_id, given.args, given.kwargs
            parent_id, deadline, codec, transport = (
                given.parent_id,
                given.deadline,
                given.codec,
                given.transport,
            )
            scope, stream, values, auth = given.scope, given.stream, given.values, given.auth
            headers = given.sent_headers
        # Encode, send, wait for the outcome within the deadline, decode.
        listener = progress_listener()
        relay = ProgressRelay(listener) if listener is not None else None
        on_frame: FrameListener | None = relay
        if stream is not None:
            stream.opened(call_id, transport, relay)
            on_frame = stream
        payload = pack_arguments(atask.name, args, kwargs, call_id, values)
        body = codec._encode_now(payload) if codec._fast_encode else await encode(codec, payload)
        request = Request(  # by position: the hot path (see Request)
            atask.name,
            call_id,
            codec.content_type,
            body,
            parent_id,
            deadline,
            effective_priority(atask.priority),
            listener is not None,
            stream.window if stream is not None else 0,
            headers,
        )
        if auth is not None:
            stamp(request, codec, auth)
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
                left = deadline - time.time()
                try:
                    async with asyncio.timeout_at(loop.time() + left):
                        reply = await transport.send_request(request, on_frame)
                except TimeoutError:
                    raise TimeoutError(_late(atask.name, left, transport)) from None
        finally:
            if slots is not None:
                assert scope is not None
                # Always take a slot again, even when this child was cancelled: the parent
                # may go on (a timeout around one child), and must not run without a slot.
                await slots.call_ended(scope, direct)
        if relay is not None:  # every report reaches the listener before the outcome
            await relay.flushed()
        if reply.ok and codec._fast_decode and reply.content_type == codec.content_type:
            return codec._decode_now(reply.body)
        return await outcome(reply, codec)

    async def one_way(
        self,
        atask: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        call_id: str | None,
        kind: Kind,
    ) -> str:
        """Send ``atask(*args, **kwargs)`` without waiting for an outcome: to one server
        (``queue``) or to every server serving it (``broadcast``); return its call id."""
        router = self.router
        codec, transport = self._route(atask, kind)
        if router.registering:
            await asyncio.wait(set(router.registering))
        scope = current_scope.get()
        call = Call(
            atask,
            call_id if call_id is not None else new_call_id(),
            args,
            kwargs,
            router.namespace,
            scope.call_id if scope is not None else None,
            None,
        )
        call.codec, call.transport = codec, transport
        proceed = self._chain(atask, kind, tracing_in_force())
        if proceed is None:
            proceed = self._innermost[kind]
        result: str = await proceed(call)
        return result

    def _send(self, call: Call) -> Coroutine[Any, Any, Any]:
        """The innermost step of a call's chain."""
        return self.call(call.definition, call.args, call.kwargs, call.stream, call)

    async def _enqueue(self, call: Call) -> str:
        """The innermost step of a fire-and-forget request: encode, and hand it over."""
        await call.transport.enqueue(await self._encoded(call))
        return call.call_id

    async def _broadcast(self, call: Call) -> str:
        """The innermost step of a broadcast request: encode, and hand it over."""
        await call.transport.broadcast(await self._encoded(call))
        return call.call_id

    async def _encoded(self, call: Call) -> Request:
        codec: Codec = call.codec
        payload = pack_arguments(call.atask, call.args, call.kwargs, call.call_id, call.values)
        request = Request(
            name=call.atask,
            call_id=call.call_id,
            content_type=codec.content_type,
            body=await encode(codec, payload),
            parent_id=call.parent_id,
            priority=effective_priority(call.definition.priority),
            headers=call.sent_headers,
        )
        if call.auth is not None:
            stamp(request, codec, call.auth)
        return request


async def outcome(reply: Reply, codec: Codec) -> Any:
    """The value a reply carries, or its exception raised."""
    if reply.ok:
        if reply.content_type != codec.content_type:
            raise NoCodecRegistered(
                f"reply is {reply.content_type!r} but this side's codec is "
                f"{codec.content_type!r}: configure the same codec on clients and servers"
            )
        return await decode(codec, reply.body)
    raise await rebuild_exception(reply, codec)


def _late(name: str, left: float, transport: Transport) -> str:
    """Why a call timed out: its deadline, and the broker's alarm if one blocks it."""
    message = f"atask {name!r} did not finish before its deadline ({max(left, 0):.3g}s)"
    if (alarm := transport.blocked_by) is not None:
        message += f"; the broker blocks publishing: {alarm}"
    return message
