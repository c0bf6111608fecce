"""The transport contract, the messages it moves, and the in-process loopback transport.

A transport moves opaque bytes plus a little metadata; it never sees Python objects.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload

from atasks.binding import BindOnConstruction
from atasks.credits import Credits
from atasks.errors import JobNotFound, NotConnected, TransportError, type_name
from atasks.events import Progress
from atasks.namespaces import get_transport  # the 2019 import path of get_transport
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT

log = logging.getLogger("atasks.transport")

if TYPE_CHECKING:
    from atasks.events import Event
    from atasks.transport.seat import SchedulerSeat


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a stream, encoded: the ``seq``-th (from 0) its server sent."""

    seq: int
    body: bytes


Frame = Progress | Item
"""What a call sends back before its outcome: progress reports and stream items, in order."""
FrameSink = Callable[[Frame], Awaitable[None]]
"""Serve side: sends one frame back to the caller."""
FrameListener = Callable[[Frame], None]
"""Call side: takes each frame of a call, in order, as it arrives; must not block or raise."""


class _NoHeaders(dict[str, str]):
    """The headers of every request that carries none: empty, shared, read-only (a request
    made without headers costs no dict of its own)."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]  # a shared default must be hashable
        return 0

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a request's empty headers are shared: assign request.headers a new dict")

    __setitem__ = __delitem__ = __ior__ = _read_only
    setdefault = pop = popitem = clear = update = _read_only


NO_HEADERS: Mapping[str, str] = _NoHeaders()


@dataclass(slots=True, kw_only=True)
class Request:
    """One call of an atask, encoded."""

    name: str
    call_id: str
    content_type: str
    body: bytes
    parent_id: str | None = None
    deadline: float | None = None  # absolute, in time.time() seconds
    priority: int | None = None  # 0 (lowest) to 9; None: sent without one
    wants_progress: bool = False
    window: int = 0
    """A stream's window: how many items its server may run ahead (0: not a stream)."""
    headers: Mapping[str, str] = NO_HEADERS
    """Context that travels with the call, set and read by the router: ``traceparent``
    (and whatever else OpenTelemetry's propagator writes), ``auth`` (a signed snapshot). A
    transport carries every entry unchanged, names and values being short strings. To add
    one, assign a new mapping: the default is shared."""
    # Serve side only, set by the transport: sends frames back to the caller (progress reports
    # when it wants them, and a stream's items) …
    emit: FrameSink | None = field(default=None, compare=False, repr=False)
    # … and, for a stream, the credits its caller grants.
    credits: Credits | None = field(default=None, compare=False, repr=False)
    # Serve side only: the transport took a slot of the server's capacity for this request,
    # which the router's handler adopts (or gives back).
    slot_taken: bool = field(default=False, compare=False, repr=False)


@dataclass(slots=True, kw_only=True)
class Reply:
    """The outcome of one call: an encoded result, or an exception.

    On failure ``body`` holds the encoded exception object, or is empty when it could not travel;
    ``error_type``, ``error_message`` and ``traceback`` always describe it in plain text.
    """

    call_id: str
    ok: bool
    content_type: str
    body: bytes
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""

    @classmethod
    def failure(cls, call_id: str, exc: Exception) -> Reply:
        """A failed reply carrying only the exception's type name and message (a transport's
        own error: nothing of it needs the codec)."""
        return cls(
            call_id=call_id,
            ok=False,
            content_type="",
            body=b"",
            error_type=type_name(exc),
            error_message=str(exc),
        )


REFUSED = frozenset(
    f"atasks.errors.{name}"
    for name in ("DecodeError", "NoCodecRegistered", "JobNotFound", "AuthError")
)
"""Errors of a request refused before it ran: dead-lettered as ``rejected``, not ``failed``."""


def dead_reason(reply: Reply) -> str:
    """Why a fire-and-forget request that ended with the failed ``reply`` is a dead letter."""
    return "rejected" if reply.error_type in REFUSED else "failed"


@dataclass(frozen=True, slots=True)
class DeadRequest:
    """A fire-and-forget request a loopback transport gave up on: why, and its last error."""

    request: Request
    reason: str  # failed, rejected
    error: str  # "module.Type: message"


RequestHandler = Callable[[Request], Coroutine[Any, Any, Reply]]
"""Serves one request; never raises but ``CancelledError``."""

ClassicCallback = Callable[[str, bytes], Awaitable[bytes]]
"""The 2019 interface's request callback: ``callback(atask_name, content) -> reply content``."""

_CLASSIC_METHODS = ("connect", "disconnect", "send_request")
_METHODS = (*_CLASSIC_METHODS, "register_callback", "unregister_callback", "drain")

__all__ = [
    "ClassicCallback",
    "DeadRequest",
    "Frame",
    "FrameListener",
    "FrameSink",
    "Item",
    "LoopbackTransport",
    "Reply",
    "Request",
    "RequestHandler",
    "Transport",
    "get_transport",
]


def _takes_name_and_content(send_request: Callable[..., Any]) -> bool:
    """Whether ``send_request`` is the 2019 ``(self, name, content)``: two required arguments
    after ``self``, where this interface's ``(self, request, on_frame=None)`` has one."""
    try:
        parameters = list(inspect.signature(send_request).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) == 2


class Capacity(Protocol):
    """How many more atasks a serving router can start now, as its transport sees it."""

    @property
    def limit(self) -> int:
        """The most atasks that run at once."""

    @property
    def free(self) -> int:
        """How many could start right now."""

    def try_take(self) -> bool:
        """Take a slot for a request about to be handled, if one is free right now."""

    def give_back_untaken(self) -> None:
        """Give back a slot from ``try_take`` whose request was never handled."""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever ``free`` may have changed."""


class Transport(metaclass=BindOnConstruction):
    """Carries requests to servers and replies back.

    Two interfaces, told apart by ``send_request``'s signature when a subclass is defined
    (``classic`` can also be set in the class body):

    - this one: ``send_request(request, on_frame) -> Reply``, ``register_callback(name,
      handler)``, ``unregister_callback(name)``, ``drain(grace)`` — with deadlines, cancellation
      and frames (progress, stream items). A subclass implements all of them, and
      ``connect``/``disconnect``; one that ``streams`` also implements ``grant``.
    - the 2019 one (``classic``): ``send_request(name, content) -> bytes`` and the inherited
      ``register_callback(callback)``, which stores ``callback(name, content) -> bytes`` in
      ``self.callback`` for the transport to call with each request it receives;
      ``unregister_callback()`` clears it. A subclass implements ``connect``, ``disconnect`` and
      ``send_request``. Routers reach such a transport through ``ClassicAdapter``, which packs
      each call into one message and back; it carries no deadline, cancellation or progress.

    Constructing a transport installs it in ``namespace`` (``None`` leaves it detached). The bare
    ``Transport()`` can be constructed, and its methods raise ``NotImplementedError``.
    """

    installs_as: ClassVar[str] = "transport"
    events_enabled = False
    """Whether ``publish_event`` publishes anything; routers skip building events otherwise."""
    classic: ClassVar[bool] = True
    """Whether this transport is written to the 2019 interface (set for each subclass)."""
    in_process: ClassVar[bool] = False
    """Whether requests never leave this process (nobody else can send any)."""
    messaging_system: ClassVar[str] = "atasks"
    """What carries the calls, as trace spans name it (``messaging.system``)."""
    streams: ClassVar[bool] = False
    """Whether this transport carries streams (requests with a ``window``, and ``grant``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "classic" not in vars(cls):
            cls.classic = _takes_name_and_content(cls.send_request)

    @classmethod
    def _missing(cls) -> tuple[str, ...]:
        if cls is Transport:
            return ()
        required = _CLASSIC_METHODS if cls.classic else _METHODS
        return tuple(name for name in required if getattr(cls, name) is getattr(Transport, name))

    def __init__(self, namespace: str | None = DEFAULT) -> None:
        self.namespace = namespace
        self.callback: ClassicCallback | None = None
        """The 2019 interface: what ``register_callback(callback)`` stored."""
        self.server_statistics: Callable[[], Mapping[str, Any]] | None = None
        """Set by a serving router: what ``atasks inspect`` shows of this server."""

    async def connect(self) -> None:
        """Get ready to send and serve. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} does not implement connect()")

    async def disconnect(self) -> None:
        """Stop serving and release every resource; pending calls fail. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} does not implement disconnect()")

    async def send_request(self, request: Request, on_frame: FrameListener | None = None) -> Reply:
        """Deliver ``request`` to a server and wait for its reply: the call's outcome.

        Raises ``JobNotFound`` when no server serves ``request.name``. Cancelling the awaiting
        task cancels the call on its server. The frames the server emits before the outcome
        (progress reports with ``request.wants_progress``, a stream's items) reach ``on_frame``
        in order, all of them before this returns.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement send_request()")

    def grant(self, call_id: str, credits: int) -> None:
        """Tell the server of stream ``call_id`` that its caller takes ``credits`` more items
        (zero: the caller is still there). Never blocks; best effort."""
        raise NotImplementedError(f"{type(self).__name__} does not carry streams")

    if TYPE_CHECKING:

        async def register_callback(self, name: str, handler: RequestHandler) -> None:
            """Start serving requests for atask ``name`` with ``handler``."""

        async def unregister_callback(self, name: str) -> None:
            """Stop taking new requests for ``name``; those in progress go on."""

    else:  # at run time the base also takes the 2019 forms, for transports written to them

        async def register_callback(self, *args):
            """Start serving requests for atask ``name`` with ``handler``: ``(name, handler)``.

            The 2019 form ``register_callback(callback)`` stores ``callback`` in
            ``self.callback``.
            """
            if len(args) == 1 and callable(args[0]):
                self.callback = args[0]
                return
            raise NotImplementedError(
                f"{type(self).__name__} does not implement register_callback(name, handler)"
            )

        async def unregister_callback(self, *args):
            """Stop taking new requests for ``name``; those in progress go on.

            The 2019 form ``unregister_callback()`` clears ``self.callback``.
            """
            if not args:
                self.callback = None
                return
            raise NotImplementedError(
                f"{type(self).__name__} does not implement unregister_callback(name)"
            )

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for requests in progress, then cancel the rest and hand
        their requests back for another server (where the transport can)."""
        raise NotImplementedError(f"{type(self).__name__} does not implement drain()")

    async def enqueue(self, request: Request) -> None:
        """Deliver ``request`` to one server, without a reply (fire and forget); return once it
        is durably accepted (over a broker: confirmed).

        The server runs it with the same handler as a call, at least once (it is settled only
        after the handler finished), and drops the reply; a failed one is kept as a dead letter
        with its last error. A request sent before any server serves ``request.name`` waits.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement enqueue()")

    async def broadcast(self, request: Request) -> None:
        """Deliver a copy of ``request`` to every server serving ``request.name`` right now,
        without a reply; return once accepted. A server that is down does not get it. Raises
        ``JobNotFound`` when no server serves it."""
        raise NotImplementedError(f"{type(self).__name__} does not implement broadcast()")

    def destination(self, name: str) -> str:
        """Where requests for atask ``name`` go, as trace spans name it (a queue's name)."""
        return name

    def set_capacity(self, capacity: Capacity) -> None:
        """Learn the serving router's capacity, to take no more requests than it can start."""

    async def publish_event(self, event: Event) -> None:
        """Publish a lifecycle event, where the transport has somewhere to publish it."""

    def scheduler_seat(self) -> SchedulerSeat | None:
        """A new contender for the namespace's scheduler role (see ``atasks.schedules``), or
        ``None`` where this transport cannot hold one."""
        return None

    async def __aenter__(self) -> Transport:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.disconnect()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"


INLINE_DEPTH = 16


class LoopbackTransport(Transport):
    """Delivers every request to this process's own router, in a fresh context.

    Calls still go through the codec, so a loopback test catches what a broker would. The
    serving coroutine runs inside the awaiting task (no task of its own, for speed) but in a
    context of its own, so nothing of the caller's context leaks into it, as over a broker.
    Beyond ``INLINE_DEPTH`` nested calls in one task it gets a task, so recursion stays
    unbounded.

    Fire-and-forget and broadcast requests run in a task of their own; one sent before its
    atask is served waits in this process until it is (not across a restart), and one that
    fails is kept in ``dead_letters``.

    It also speaks the 2019 interface: ``register_callback(callback)`` then
    ``send_request(name, content)`` awaits ``callback(name, content)`` and returns its bytes
    (without ``connect()``, as in 2019).
    """

    classic = False
    in_process = True
    streams = True

    def __init__(self, namespace: str | None = DEFAULT) -> None:
        super().__init__(namespace)
        self._handlers: dict[str, RequestHandler] = {}
        self._calls: dict[object, asyncio.Task[Any]] = {}  # request calls running: their task
        self._watched: dict[object, asyncio.Future[None]] = {}  # set as each ends, for drain()
        self._stopping: set[asyncio.Task[Any]] = set()
        self._inline_depth: dict[asyncio.Task[Any], int] = {}
        self._credits: dict[str, Credits] = {}
        self._connected = False
        self._waiting: dict[str, list[Request]] = {}  # enqueued before their atask was served
        self._queued: dict[asyncio.Task[None], Request] = {}  # fire-and-forget ones running
        self.dead_letters: list[DeadRequest] = []
        """Fire-and-forget requests that failed (after their retries), oldest first."""

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._handlers.clear()
        self.callback = None
        await self.drain(0)
        self._connected = False

    @overload
    async def send_request(
        self, request: Request, on_frame: FrameListener | None = None
    ) -> Reply: ...

    @overload
    async def send_request(self, request: str, on_frame: bytes) -> bytes: ...

    async def send_request(self, request: Any, on_frame: Any = None) -> Any:
        if type(request) is str:  # the 2019 interface: name, content
            return await self._send_classic(request, on_frame)
        if not self._connected:
            raise NotConnected(f"{self!r} is not connected: await transport.connect() first")
        handler = self._handlers.get(request.name)
        if handler is None:
            raise JobNotFound(
                f"no server serves atask {request.name!r} in this process: a loopback transport "
                "reaches only atasks registered here and activated with router.activate()"
            )
        if on_frame is not None:
            listener: FrameListener = on_frame

            async def emit(frame: Frame) -> None:
                listener(frame)

            request.emit = emit
        if request.window:
            request.credits = self._credits[request.call_id] = Credits(request.window)
        caller = asyncio.current_task()
        assert caller is not None
        depth = self._inline_depth.get(caller, 0)
        context = contextvars.Context()
        awaited: Awaitable[Reply]
        if depth < INLINE_DEPTH:  # the fast path: no task, no trip through the event loop
            coroutine = handler(request)
            self._inline_depth[caller] = depth + 1
            try:  # its first step now: most calls finish in it, and need nothing more
                first = context.run(coroutine.send, None)
            except BaseException as exc:
                self._left(caller, depth)
                if request.window:
                    self._credits.pop(request.call_id, None)
                if isinstance(exc, StopIteration):
                    result: Reply = exc.value
                    return result
                raise
            serving, awaited = caller, _InContext(coroutine, context, first)
        else:  # deep recursion: a task of its own keeps the stack flat
            serving = asyncio.get_running_loop().create_task(handler(request), context=context)
            awaited = serving
        key = object()
        self._calls[key] = serving
        try:
            return await awaited
        except asyncio.CancelledError:
            if serving is caller and caller in self._stopping:
                caller.uncancel()
            elif serving is caller or caller.cancelling():
                raise
            raise TransportError(
                f"the server stopped before atask {request.name!r} finished"
            ) from None
        finally:
            if request.window:
                self._credits.pop(request.call_id, None)
            del self._calls[key]
            if self._watched:
                finished = self._watched.pop(key, None)
                if finished is not None:
                    finished.set_result(None)
            if serving is caller:
                self._left(caller, depth)

    def _left(self, caller: asyncio.Task[Any], depth: int) -> None:
        """An inline call of ``caller`` is over: back to ``depth`` calls deep."""
        if depth:
            self._inline_depth[caller] = depth
        else:
            del self._inline_depth[caller]

    def grant(self, call_id: str, credits: int) -> None:
        window = self._credits.get(call_id)
        if window is not None:
            window.grant(credits)

    async def enqueue(self, request: Request) -> None:
        if not self._connected:
            raise NotConnected(f"{self!r} is not connected: await transport.connect() first")
        handler = self._handlers.get(request.name)
        if handler is None:
            self._waiting.setdefault(request.name, []).append(request)
        else:
            self._start(handler, request)

    async def broadcast(self, request: Request) -> None:
        if not self._connected:
            raise NotConnected(f"{self!r} is not connected: await transport.connect() first")
        handler = self._handlers.get(request.name)
        if handler is None:
            raise JobNotFound(f"no server serves atask {request.name!r} in this process")
        self._start(handler, request)

    def _start(self, handler: RequestHandler, request: Request) -> None:
        task = asyncio.get_running_loop().create_task(
            self._run_queued(handler, request), context=contextvars.Context()
        )
        self._queued[task] = request
        task.add_done_callback(self._queued.pop)

    async def _run_queued(self, handler: RequestHandler, request: Request) -> None:
        try:
            reply = await handler(request)
        except asyncio.CancelledError:  # drained: wait for the next server, as on a broker
            self._waiting.setdefault(request.name, []).insert(0, request)
            return
        if not reply.ok:
            dead = DeadRequest(
                request, dead_reason(reply), f"{reply.error_type}: {reply.error_message}"
            )
            log.error(
                "fire-and-forget call %s of %r %s: %s",
                request.call_id,
                request.name,
                dead.reason,
                dead.error,
            )
            self.dead_letters.append(dead)

    async def _send_classic(self, name: str, content: bytes) -> bytes:
        callback = self.callback
        if callback is None:
            raise JobNotFound(
                f"nothing serves {name!r} through {self!r}: register_callback(callback) first"
            )
        return await callback(name, content)

    @overload
    async def register_callback(self, name: str, handler: RequestHandler) -> None: ...

    @overload
    async def register_callback(self, name: ClassicCallback) -> None: ...

    async def register_callback(self, name: Any, handler: Any = None) -> None:
        if handler is None:  # the 2019 interface: one callback for every name
            self.callback = name
        else:
            self._handlers[name] = handler
            for request in self._waiting.pop(name, []):
                self._start(handler, request)

    async def unregister_callback(self, name: str | None = None) -> None:
        if name is None:
            self.callback = None
        else:
            self._handlers.pop(name, None)

    def scheduler_seat(self) -> SchedulerSeat:
        from atasks.transport.seat import LoopbackSeat

        return LoopbackSeat(self)

    def _watch(self) -> set[asyncio.Future[None]]:
        """A future for each request call running now, set when it ends (made only here: a
        call costs no future unless someone drains)."""
        loop, watched = asyncio.get_running_loop(), self._watched
        for key in self._calls:
            if key not in watched:
                watched[key] = loop.create_future()
        return {watched[key] for key in self._calls}

    async def drain(self, grace: float) -> None:
        queued = set(self._queued)
        if (self._calls or queued) and grace > 0:
            await asyncio.wait(self._watch() | queued, timeout=grace)
        for task in self._queued:
            task.cancel()
        if self._queued:
            await asyncio.wait(set(self._queued))
        # Nested inline calls share a task, and one cancel ends only the innermost: cancel
        # again until every call is over.
        while self._calls:
            tasks = set(self._calls.values())
            self._stopping |= tasks
            try:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(self._watch(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                self._stopping -= tasks


class _InContext:
    """Await a coroutine inside the current task, but with every step run in ``context``; its
    first step was taken already, and yielded ``first``."""

    __slots__ = ("context", "coroutine", "first")

    def __init__(
        self, coroutine: Coroutine[Any, Any, Reply], context: contextvars.Context, first: Any
    ) -> None:
        self.coroutine = coroutine
        self.context = context
        self.first = first

    def __await__(self) -> Generator[Any, Any, Reply]:
        run, send, throw = self.context.run, self.coroutine.send, self.coroutine.throw
        step = self.first
        while True:
            resume: Any
            try:
                argument: Any = yield step
                resume = send
            except BaseException as exc:  # delivered into the coroutine at its next step
                resume, argument = throw, exc
            try:
                step = run(resume, argument)
            except StopIteration as stop:
                result: Reply = stop.value
                return result
