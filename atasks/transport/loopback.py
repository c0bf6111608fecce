"""The in-process transport: every request goes to this process's own router."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Awaitable, Coroutine, Generator
from functools import partial
from typing import TYPE_CHECKING, Any, overload

from atasks.compat import ClassicCallback, Transport, send_classic
from atasks.credits import Credits
from atasks.errors import JobNotFound, NotConnected, TransportError
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT
from atasks.transport.contract import RequestHandler
from atasks.transport.messages import DeadRequest, Frame, FrameListener, Reply, Request
from atasks.transport.serving import Run, run, serve
from atasks.transport.tokens import LocalTokens, Tokens

if TYPE_CHECKING:
    from atasks.transport.seat import SchedulerSeat

__all__ = ["INLINE_DEPTH", "LoopbackTransport"]

INLINE_DEPTH = 16
_depth: contextvars.ContextVar[int] = contextvars.ContextVar("atasks_loopback_depth", default=0)
"""How many calls deep the atask running here was served inline (a task it starts counts on
from there: conservative, never too deep)."""


def _context_at(depth: int) -> contextvars.Context:
    context = contextvars.Context()
    context.run(_depth.set, depth)
    return context


_CONTEXTS = tuple(_context_at(depth) for depth in range(INLINE_DEPTH + 1))
"""An empty context but for the depth, one per depth: a served call gets a copy, as cheap as a
new one."""


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
        self._credits: dict[str, Credits] = {}
        self._connected = False
        self._waiting: dict[str, list[Request]] = {}  # enqueued before their atask was served
        self._queued: dict[asyncio.Task[None], Request] = {}  # fire-and-forget ones running
        self.dead_letters: list[DeadRequest] = []
        self._tokens: LocalTokens | None = None
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
            return await send_classic(self, request, on_frame)
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
        depth = _depth.get()
        awaited: Awaitable[Reply]
        if depth < INLINE_DEPTH:  # the fast path: no task, no trip through the event loop
            context = _CONTEXTS[depth + 1].copy()
            coroutine = handler(request)
            try:  # its first step now: most calls finish in it, and need nothing more
                first = context.run(coroutine.send, None)
            except BaseException as exc:
                if request.window:
                    self._credits.pop(request.call_id, None)
                if isinstance(exc, StopIteration):
                    result: Reply = exc.value
                    return result
                raise
            caller = asyncio.current_task()  # looked up only for a call that goes on
            assert caller is not None
            serving = caller
            awaited = _InContext(coroutine, context, first)
        else:  # deep recursion: a task of its own keeps the stack flat
            caller = asyncio.current_task()
            assert caller is not None
            serving = asyncio.get_running_loop().create_task(
                handler(request), context=contextvars.Context()
            )
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
        async def take() -> Run:
            return partial(run, request.name, request, handler)

        await serve(_Queued(self, request), take)

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

    def tokens(self) -> Tokens:
        if self._tokens is None:
            self._tokens = LocalTokens()
        return self._tokens

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


class _Queued:
    """A fire-and-forget or broadcast request of a loopback transport, as its ``Delivery``."""

    __slots__ = ("request", "settled", "transport")

    wants_reply = False  # its reply is dropped
    restartable = True
    cancelled_by_caller = False
    lost: tuple[type[BaseException], ...] = ()  # nothing to lose in a process

    def __init__(self, transport: LoopbackTransport, request: Request) -> None:
        self.transport = transport
        self.request = request
        self.settled = False

    @property
    def name(self) -> str:
        return self.request.name

    @property
    def call_id(self) -> str:
        return self.request.call_id

    async def ack(self) -> None:
        self.settled = True

    async def hand_back(self) -> None:
        """Wait in this process for the next server of its atask, first in line, as on a
        broker."""
        self.settled = True
        self.transport._waiting.setdefault(self.request.name, []).insert(0, self.request)

    async def dead_letter(self, reason: str, error_type: str, error_message: str) -> None:
        self.settled = True
        dead = DeadRequest(self.request, reason, f"{error_type}: {error_message}")
        self.transport.dead_letters.append(dead)

    async def reply(self, reply: Reply) -> None:
        await self.ack()

    async def keep(self, reply: Reply, error: BaseException) -> None:
        pass


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
