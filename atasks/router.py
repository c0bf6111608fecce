"""The router: the calls of one namespace's atasks, and, once activated, serving them.

It puts the two sides together: ``call_side`` (an atask awaited here becomes a request) and
``serve_side`` (a request becomes a run of the atask), each through the namespace's middleware
chain (``atasks.middleware``). The router never imports a broker library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from atasks.call_side import Caller
from atasks.codecs.base import Codec, encode
from atasks.codecs.pickle_codec import PickleCodec
from atasks.compat import ClassicAdapter, Router0_0_3, modern
from atasks.errors import ConfigurationError, JobNotFound, NoCodecRegistered
from atasks.middleware import Middleware
from atasks.namespaces import DEFAULT, bind_router, get_codec, get_transport, namespace
from atasks.payload import pack_arguments
from atasks.serve_side import Counts, Serving
from atasks.settings import DEFAULT_CONCURRENCY, DEFAULT_GRACE
from atasks.slots import Slots
from atasks.transport.contract import Transport
from atasks.transport.messages import Reply, Request

if TYPE_CHECKING:
    from atasks.schedules.scheduler import Scheduler
    from atasks.streams import Received

log = logging.getLogger("atasks.router")
_unsigned_pickle_warned = False  # the warning about unsigned pickle on a broker: once a process


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


class Router(Router0_0_3):
    """Sends calls of a namespace's atasks and, once activated, serves them.

    ``codec`` and ``transport`` default to those bound to ``namespace`` at the time of each call.
    A transport written to the 2019 interface (``Transport.classic``) is reached through its
    ``ClassicAdapter``: no deadline, cancellation or progress crosses it.

    ``middleware`` (``atasks.Middleware`` objects, the first outermost) wrap every call on both
    sides, inside tracing, events, auth and propagated context, outside retries.
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT,
        codec: Codec | None = None,
        transport: Transport | None = None,
        middleware: Iterable[Middleware] = (),
    ) -> None:
        self.namespace = namespace
        self.given_codec = codec
        self.given_transport = transport
        self.registering: set[asyncio.Task[None]] = set()
        """Registrations of atasks imported since ``activate``: calls wait for them."""
        self.caller = Caller(self)
        """Makes this router's calls: ``ATask`` objects call ``caller.call`` directly."""
        self._active: Transport | None = None
        self._server: Serving | None = None
        self._counts = Counts()
        self._served: list[str] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduler: Scheduler | None = None
        self.ns = bind_router(self, namespace)  # never replaced: reset() empties it in place
        for one in middleware:
            self.add_middleware(one)

    @property
    def codec(self) -> Codec:
        """The codec given to this router, else the one its namespace has now."""
        codec = self.given_codec if self.given_codec is not None else self.ns.codec
        return codec if codec is not None else get_codec(self.namespace)  # which raises

    @property
    def transport(self) -> Transport:
        """The transport given to this router, else the one its namespace has now."""
        given = self.given_transport
        transport = given if given is not None else self.ns.transport
        return transport if transport is not None else get_transport(self.namespace)  # raises

    @property
    def active(self) -> bool:
        return self._active is not None

    @property
    def serving(self) -> Transport | None:
        """The transport this router serves through (a 2019-style one, not its adapter)."""
        serving = self._active
        return serving.inner if isinstance(serving, ClassicAdapter) else serving

    @property
    def middleware(self) -> tuple[Middleware, ...]:
        """The user's middlewares of this namespace, outermost first."""
        return tuple(self.caller.middleware)

    def add_middleware(self, middleware: Middleware) -> None:
        """Wrap every call from now on in ``middleware`` too, inside those added before."""
        if not isinstance(middleware, Middleware):
            raise TypeError(f"add_middleware takes an atasks.Middleware, not {middleware!r}")
        self.caller.middleware.append(middleware)
        self.caller.forget_chains()
        if self._server is not None:
            self._server.forget_chains()

    def __repr__(self) -> str:
        return f"Router(namespace={self.namespace!r})"

    # --- call side -----------------------------------------------------------------------

    def call(
        self,
        atask: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        stream: Received | None = None,
    ) -> Coroutine[Any, Any, Any]:
        """Run ``atask(*args, **kwargs)`` on a server and return its result; with ``stream``,
        its items go there and the result is how many the server sent."""
        return self.caller.call(atask, args, kwargs, stream)

    async def enqueue(
        self,
        atask: Any,
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
        return await self.caller.one_way(atask, args, kwargs, call_id, "queue")

    async def broadcast(
        self,
        atask: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        call_id: str | None = None,
    ) -> str:
        """Run ``atask(*args, **kwargs)`` on every server that serves it right now, each its own
        copy, without replies; return its call id once the transport accepted it. Raises
        ``JobNotFound`` when no server serves it."""
        return await self.caller.one_way(atask, args, kwargs, call_id, "broadcast")

    async def firing(self, atask: Any, call_id: str) -> Request:
        """The request of a scheduled run of ``atask``: no arguments, no parent, no deadline
        (the atask's ``timeout`` counts from when a server starts it)."""
        codec = self.codec
        return Request(
            name=atask.name,
            call_id=call_id,
            content_type=codec.content_type,
            body=await encode(codec, pack_arguments(atask.name, (), {}, call_id, None)),
            priority=atask.priority,
        )

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
        if self._active is transport:
            return
        if self._active is not None:
            log.info("%r: switching from %r to %r", self, self._active, transport)
            await self.deactivate()
        if processes is not None and processes < 1:
            raise ConfigurationError(f"processes must be at least 1, not {processes}")
        slots = Slots(concurrency)
        transport.set_capacity(slots)
        self._server = Serving(
            self, transport, slots, processes, self.caller.middleware, self._counts
        )
        self._active = transport
        self._loop = asyncio.get_running_loop()
        check_codec(self, self.serving or transport)
        ns = namespace(self.namespace)
        self._served = []
        ns.on_atask.append(self._on_new_atask)
        try:
            for name in list(ns.atasks):
                if name not in self._served:
                    self._served.append(name)
                    await transport.register_callback(name, self._server.handle)
            if ns.schedules:
                await self._start_scheduler(transport)
        except BaseException:
            await self.deactivate(0)
            raise
        # Only now does the server answer `atasks ping` and `inspect`: a ping answered while
        # some atask was not yet served told its caller to go on, and the call got JobNotFound.
        transport.server_statistics = lambda: self.statistics().as_dict()
        log.info(
            "serving %d atask%s of namespace %r (concurrency %d)",
            len(self._served),
            "" if len(self._served) == 1 else "s",
            self.namespace,
            concurrency,
        )

    async def deactivate(self, grace: float = DEFAULT_GRACE) -> None:
        """Stop taking requests, let those in progress finish within ``grace`` seconds, and hand
        the rest back to the transport. Idempotent."""
        transport, self._active = self._active, None
        if transport is None:
            return
        with contextlib.suppress(ValueError):
            namespace(self.namespace).on_atask.remove(self._on_new_atask)
        try:
            scheduler, self._scheduler = self._scheduler, None
            if scheduler is not None:
                await scheduler.stop()  # first: another server takes the role over at once
            if self.registering:
                await asyncio.wait(set(self.registering))
            for name in self._served:
                await transport.unregister_callback(name)
        finally:
            try:
                await transport.drain(grace)
            finally:
                server = self._server
                if server is not None:
                    await server.close()

    def handle(self, request: Request) -> Coroutine[Any, Any, Reply]:
        """Serve one request. Returns a reply for every outcome; only cancellation propagates."""
        server = self._server
        if server is None:
            return _not_serving(self, request)
        return server.handle(request)

    def served_atask(self, request: Request, codec: Codec) -> Any:
        """The atask a request calls, once this server serves it and speaks its codec."""
        atask = self.ns.atasks.get(request.name)
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

    def statistics(self) -> RouterStatistics:
        server = self._server
        slots = server.slots if server is not None else None
        return RouterStatistics(
            namespace=self.namespace,
            atasks=tuple(self._served),
            concurrency=slots.limit if slots else 0,
            running=slots.running if slots else 0,
            parked=slots.parked if slots else 0,
            waiting=slots.waiting if slots else 0,
            succeeded=self._counts.succeeded,
            failed=self._counts.failed,
            retried=self._counts.retried,
            cancelled=self._counts.cancelled,
            started_at=server.started_at if server else 0.0,
            **(self._scheduler.statistics() if self._scheduler is not None else {}),
        )

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

    def _on_new_atask(self, atask: Any) -> None:
        """An atask was registered while this router serves: serve it too. Any thread."""
        loop = self._loop
        if self._active is None or loop is None or loop.is_closed():
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
        transport = self._active
        if transport is None or name in self._served:
            return
        self._served.append(name)
        server = self._server
        assert server is not None
        task = asyncio.get_running_loop().create_task(
            transport.register_callback(name, server.handle)
        )
        self.registering.add(task)

        def done(task: asyncio.Task[None]) -> None:
            self.registering.discard(task)
            if not task.cancelled() and task.exception() is not None:
                log.error("could not serve atask %r: %s", name, task.exception())

        task.add_done_callback(done)


def check_codec(router: Router, transport: Transport) -> None:
    """Say at start what would otherwise surprise: no codec, or unsigned pickle on a broker."""
    global _unsigned_pickle_warned
    try:
        codec = router.codec
    except NoCodecRegistered:
        log.warning(
            "%r serves without a codec: every request is answered with NoCodecRegistered "
            "until one is installed (e.g. PickleCodec(%r))",
            router,
            router.namespace,
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


def get_router(namespace_name: str = DEFAULT) -> Router:
    """The router of a namespace, created on first use."""
    router: Router | None = namespace(namespace_name).router
    return router if router is not None else Router(namespace=namespace_name)


async def _not_serving(router: Router, request: Request) -> Reply:
    return Reply.failure(
        request.call_id,
        JobNotFound(f"{router!r} does not serve: await router.activate(transport) first"),
    )
