"""The transport contract, the messages it moves, and the in-process loopback transport.

A transport moves opaque bytes plus a little metadata; it never sees Python objects.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, overload

from atasks.errors import JobNotFound, NotConnected, TransportError, type_name
from atasks.events import deliver_progress
from atasks.namespaces import DEFAULT, BindOnConstruction, bind_transport, get_transport

if TYPE_CHECKING:
    from atasks.events import Event, Progress, ProgressListener
    from atasks.transport.seat import SchedulerSeat

ProgressSink = Callable[["Progress"], Awaitable[None]]


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
    wants_progress: bool = False
    headers: Mapping[str, str] = NO_HEADERS
    """Context that travels with the call, set and read by the router: ``traceparent``
    (and whatever else OpenTelemetry's propagator writes), ``auth`` (a signed snapshot). A
    transport carries every entry unchanged, names and values being short strings. To add
    one, assign a new mapping: the default is shared."""
    # Serve side only, set by the transport: carries progress reports back to the caller.
    report: ProgressSink | None = field(default=None, compare=False, repr=False)
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


RequestHandler = Callable[[Request], Coroutine[Any, Any, Reply]]
"""Serves one request; never raises but ``CancelledError``."""

ClassicCallback = Callable[[str, bytes], Awaitable[bytes]]
"""The 2019 interface's request callback: ``callback(atask_name, content) -> reply content``."""

_CLASSIC_METHODS = ("connect", "disconnect", "send_request")
_METHODS = (*_CLASSIC_METHODS, "register_callback", "unregister_callback", "drain")

__all__ = [
    "ClassicCallback",
    "LoopbackTransport",
    "Reply",
    "Request",
    "RequestHandler",
    "Transport",
    "get_transport",
]


def _takes_name_and_content(send_request: Callable[..., Any]) -> bool:
    """Whether ``send_request`` is the 2019 ``(self, name, content)``: two required arguments
    after ``self``, where this interface's ``(self, request, on_progress=None)`` has one."""
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

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever ``free`` may have changed."""


class Transport(metaclass=BindOnConstruction):
    """Carries requests to servers and replies back.

    Two interfaces, told apart by ``send_request``'s signature when a subclass is defined
    (``classic`` can also be set in the class body):

    - this one: ``send_request(request, on_progress) -> Reply``, ``register_callback(name,
      handler)``, ``unregister_callback(name)``, ``drain(grace)`` — with deadlines, cancellation
      and progress. A subclass implements all of them, and ``connect``/``disconnect``.
    - the 2019 one (``classic``): ``send_request(name, content) -> bytes`` and the inherited
      ``register_callback(callback)``, which stores ``callback(name, content) -> bytes`` in
      ``self.callback`` for the transport to call with each request it receives;
      ``unregister_callback()`` clears it. A subclass implements ``connect``, ``disconnect`` and
      ``send_request``. Routers reach such a transport through ``ClassicAdapter``, which packs
      each call into one message and back; it carries no deadline, cancellation or progress.

    Constructing a transport installs it in ``namespace`` (``None`` leaves it detached). The bare
    ``Transport()`` can be constructed, and its methods raise ``NotImplementedError``.
    """

    events_enabled = False
    """Whether ``publish_event`` publishes anything; routers skip building events otherwise."""
    classic: ClassVar[bool] = True
    """Whether this transport is written to the 2019 interface (set for each subclass)."""
    in_process: ClassVar[bool] = False
    """Whether requests never leave this process (nobody else can send any)."""
    messaging_system: ClassVar[str] = "atasks"
    """What carries the calls, as trace spans name it (``messaging.system``)."""

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

    def _bind(self) -> None:
        if self.namespace is not None:
            bind_transport(self, self.namespace)

    async def connect(self) -> None:
        """Get ready to send and serve. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} does not implement connect()")

    async def disconnect(self) -> None:
        """Stop serving and release every resource; pending calls fail. Idempotent."""
        raise NotImplementedError(f"{type(self).__name__} does not implement disconnect()")

    async def send_request(
        self, request: Request, on_progress: ProgressListener | None = None
    ) -> Reply:
        """Deliver ``request`` to a server and wait for its reply.

        Raises ``JobNotFound`` when no server serves ``request.name``. Cancelling the awaiting
        task cancels the call on its server. With ``request.wants_progress``, the server's
        progress reports reach ``on_progress``.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement send_request()")

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

    It also speaks the 2019 interface: ``register_callback(callback)`` then
    ``send_request(name, content)`` awaits ``callback(name, content)`` and returns its bytes
    (without ``connect()``, as in 2019).
    """

    classic = False
    in_process = True

    def __init__(self, namespace: str | None = DEFAULT) -> None:
        super().__init__(namespace)
        self._handlers: dict[str, RequestHandler] = {}
        self._calls: dict[object, tuple[asyncio.Task[Any], asyncio.Future[None]]] = {}
        self._stopping: set[asyncio.Task[Any]] = set()
        self._inline_depth: dict[asyncio.Task[Any], int] = {}
        self._connected = False

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._handlers.clear()
        self.callback = None
        await self.drain(0)
        self._connected = False

    @overload
    async def send_request(
        self, request: Request, on_progress: ProgressListener | None = None
    ) -> Reply: ...

    @overload
    async def send_request(self, request: str, on_progress: bytes) -> bytes: ...

    async def send_request(self, request: Any, on_progress: Any = None) -> Any:
        if type(request) is str:  # the 2019 interface: name, content
            return await self._send_classic(request, on_progress)
        if not self._connected:
            raise NotConnected(f"{self!r} is not connected: await transport.connect() first")
        handler = self._handlers.get(request.name)
        if handler is None:
            raise JobNotFound(
                f"no server serves atask {request.name!r} in this process: a loopback transport "
                "reaches only atasks registered here and activated with router.activate()"
            )
        if on_progress is not None:
            listener = on_progress

            async def report(progress: Progress) -> None:
                await deliver_progress(listener, progress)

            request.report = report
        caller = asyncio.current_task()
        assert caller is not None
        depth = self._inline_depth.get(caller, 0)
        context = contextvars.Context()
        awaited: Awaitable[Reply]
        if depth < INLINE_DEPTH:  # the fast path: no task, no trip through the event loop
            serving, awaited = caller, _InContext(handler(request), context)
            self._inline_depth[caller] = depth + 1
        else:  # deep recursion: a task of its own keeps the stack flat
            serving = asyncio.get_running_loop().create_task(handler(request), context=context)
            awaited = serving
        key, finished = object(), asyncio.get_running_loop().create_future()
        self._calls[key] = (serving, finished)
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
            del self._calls[key]
            finished.set_result(None)
            if serving is caller:
                if depth:
                    self._inline_depth[caller] = depth
                else:
                    del self._inline_depth[caller]

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

    async def unregister_callback(self, name: str | None = None) -> None:
        if name is None:
            self.callback = None
        else:
            self._handlers.pop(name, None)

    def scheduler_seat(self) -> SchedulerSeat:
        from atasks.transport.seat import LoopbackSeat

        return LoopbackSeat(self)

    async def drain(self, grace: float) -> None:
        if self._calls and grace > 0:
            await asyncio.wait({finished for _, finished in self._calls.values()}, timeout=grace)
        # Nested inline calls share a task, and one cancel ends only the innermost: cancel
        # again until every call is over.
        while self._calls:
            tasks = {task for task, _ in self._calls.values()}
            self._stopping |= tasks
            try:
                for task in tasks:
                    task.cancel()
                await asyncio.wait(
                    {finished for _, finished in self._calls.values()},
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                self._stopping -= tasks


class _InContext:
    """Await a coroutine inside the current task, but with every step run in ``context``."""

    __slots__ = ("context", "coroutine")

    def __init__(self, coroutine: Coroutine[Any, Any, Reply], context: contextvars.Context):
        self.coroutine = coroutine
        self.context = context

    def __await__(self) -> Generator[Any, Any, Reply]:
        run, send, throw = self.context.run, self.coroutine.send, self.coroutine.throw
        value: Any = None
        error: BaseException | None = None
        while True:
            try:
                step = run(send, value) if error is None else run(throw, error)
            except StopIteration as stop:
                result: Reply = stop.value
                return result
            try:
                value, error = (yield step), None
            except BaseException as exc:  # delivered into the coroutine at its next step
                value, error = None, exc
