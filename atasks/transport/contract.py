"""The transport contract: what a router asks of a transport, and what it offers one.

The contract speaks one interface. Transports written to the 2019 one are reached through
``atasks.compat``, whose ``Transport`` (the public ``atasks.Transport``) tells the two apart
when a subclass is defined.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from atasks.binding import BindOnConstruction
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT
from atasks.transport.messages import FrameListener, Reply, Request

if TYPE_CHECKING:
    from atasks.events import Event
    from atasks.transport.seat import SchedulerSeat
    from atasks.transport.tokens import Tokens

__all__ = ["Capacity", "RequestHandler", "Transport"]

RequestHandler = Callable[[Request], Coroutine[Any, Any, Reply]]
"""Serves one request; never raises but ``CancelledError``."""

METHODS = (
    "connect",
    "disconnect",
    "send_request",
    "register_callback",
    "unregister_callback",
    "drain",
)
"""What a transport implements (one that ``streams`` also implements ``grant``)."""


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

    def reserve(self) -> asyncio.Future[bool]:
        """Wait for a slot for a request not yet handled: True once it is taken, as by
        ``try_take``; False once ``unreserve`` stopped the wait."""

    def unreserve(self, granted: asyncio.Future[bool]) -> None:
        """Stop waiting for ``granted`` (from ``reserve``), or give back the slot it got and no
        request went on with."""

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever ``free`` may have changed."""


class Transport(metaclass=BindOnConstruction):
    """Carries requests to servers and replies back: ``send_request(request, on_frame) ->
    Reply``, ``register_callback(name, handler)``, ``unregister_callback(name)``,
    ``drain(grace)`` — with deadlines, cancellation and frames (progress, stream items). A
    subclass implements all of them, and ``connect``/``disconnect``; one that ``streams`` also
    implements ``grant``.

    Constructing a transport installs it in ``namespace`` (``None`` leaves it detached).
    """

    installs_as: ClassVar[str] = "transport"
    events_enabled = False
    """Whether ``publish_event`` publishes anything; routers skip building events otherwise."""
    classic: ClassVar[bool] = False
    """Whether this transport is written to the 2019 interface (``atasks.compat``)."""
    in_process: ClassVar[bool] = False
    """Whether requests never leave this process (nobody else can send any)."""
    messaging_system: ClassVar[str] = "atasks"
    """What carries the calls, as trace spans name it (``messaging.system``)."""
    streams: ClassVar[bool] = False
    """Whether this transport carries streams (requests with a ``window``, and ``grant``)."""

    @classmethod
    def _missing(cls) -> tuple[str, ...]:
        if cls is Transport:
            return ()
        return tuple(name for name in METHODS if getattr(cls, name) is getattr(Transport, name))

    def __init__(self, namespace: str | None = DEFAULT) -> None:
        self.namespace = namespace
        self.server_statistics: Callable[[], Mapping[str, Any]] | None = None
        """Set by a serving router: what ``atasks inspect`` shows of this server."""

    @property
    def blocked_by(self) -> str | None:
        """Why the broker blocks this transport's messages right now (a resource alarm, such as
        ``low on memory``), or ``None``."""
        return None

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

    async def register_callback(self, name: str, handler: RequestHandler) -> None:
        """Start serving requests for atask ``name`` with ``handler``."""
        raise NotImplementedError(
            f"{type(self).__name__} does not implement register_callback(name, handler)"
        )

    async def unregister_callback(self, name: str) -> None:
        """Stop taking new requests for ``name``; those in progress go on."""
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

    @property
    def connected(self) -> bool:
        """Whether it works now: connected and, for a server, consuming again after losing its
        broker (what ``/readyz`` reports). A transport without a connection to lose says True."""
        return True

    def scheduler_seat(self) -> SchedulerSeat | None:
        """A new contender for the namespace's scheduler role (see ``atasks.schedules``), or
        ``None`` where this transport cannot hold one."""
        return None

    def tokens(self) -> Tokens | None:
        """The namespace's fleet-wide tokens (``@atask(limit=...)``, ``atasks.lock``), the same
        object each time, or ``None`` where this transport has none."""
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
