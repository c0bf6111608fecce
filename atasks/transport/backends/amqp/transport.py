"""``AMQPTransport``: the connection, the call side and the serve side put together."""

from __future__ import annotations

from collections.abc import Coroutine, Sequence
from typing import Any

from atasks import settings
from atasks.compat import Transport
from atasks.errors import ConfigurationError, NotConnected
from atasks.events import Event
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT
from atasks.transport.backends.amqp.client import Caller, Replies
from atasks.transport.backends.amqp.connection import Link, State, safe_url
from atasks.transport.backends.amqp.intake import MAX_PREFETCH
from atasks.transport.backends.amqp.monitor import queue_depths
from atasks.transport.backends.amqp.seat import AMQPSeat
from atasks.transport.backends.amqp.server import Server
from atasks.transport.backends.amqp.tokens import AMQPTokens
from atasks.transport.backends.amqp.topology import QueueType, Topology
from atasks.transport.contract import Capacity, RequestHandler
from atasks.transport.messages import FrameListener, Reply, Request
from atasks.transport.seat import SchedulerSeat

URL_ENV = "ATASKS_URL"
DEFAULT_URL = settings.DEFAULT_URL
BACKGROUND_WAIT = 1.0  # seconds disconnect() lets cancellations and events get out


class AMQPTransport(Transport):
    """Sends and serves atasks through a RabbitMQ broker (3.10 and newer, 4.x included).

    ``url`` defaults to ``$ATASKS_URL``, then ``amqp://guest:guest@127.0.0.1:5672/``; several
    URLs (a list, or comma-separated) are the nodes of a cluster, tried in turn. The transport
    reconnects by itself after losing the broker, and calls in flight survive it: requests not yet
    confirmed are published again, and a server that lost its connection keeps finished replies
    and sends them once reconnected. With ``replies="direct"`` (the default) replies come by
    RabbitMQ's direct reply-to; after a reconnect the caller asks the servers to resume its calls,
    and they send again the replies they keep for a while once sent, or send those still to come
    to its new address. ``replies="durable"``: replies wait in a quorum queue of this transport's
    own until it is back, which also outlives a server that stops before the caller is back
    (slower, one call at a time).

    ``queue_type``: request queues are ``"quorum"`` (durable, replicated in a cluster; the
    default) or ``"classic"``. ``delivery_limit``: a request delivered this many times without
    being finished (each server died holding it) is dead-lettered and its caller gets
    ``DeliveryLimitExceeded``; from its second such death it runs alone (docs:
    guides/rabbitmq.md, Suspects).
    ``dead_letter_ttl``: seconds a dead letter is kept.
    ``max_message_size``: the largest request or reply, checked before publishing so that one
    oversize call fails alone (by default the broker's own default: 16 MiB on RabbitMQ 4.x,
    128 MiB on 3.x; set it to your broker's ``max_message_size``). ``reconnect_wait``:
    how long a call waits for a lost connection to come back before failing.
    ``consumer_timeout``: the broker's (RabbitMQ's default: 30 minutes); a call running longer
    than half of it is leased rather than held, so it may run for hours (see ``lease``).
    ``persistent``:
    requests survive a broker restart on classic queues too (quorum queues keep every message).
    ``max_priority``: classic request queues are declared with ``x-max-priority`` (1 to 9), so
    the broker starts waiting requests of higher priority first; without it they are FIFO, as
    in atasks 0.2. Quorum queues take no such argument (RabbitMQ 4.x orders them by itself).
    ``coalesce``: calls to one atask that are ready in the same turn of the event loop (a
    ``gather``) travel in one message, up to this many; each still runs, answers and fails as a
    call of its own (1: every call alone).
    """

    messaging_system = "rabbitmq"
    streams = True

    def __init__(
        self,
        url: str | Sequence[str] | None = None,
        *,
        namespace: str | None = DEFAULT,
        queue_type: QueueType | None = None,
        replies: Replies | None = None,
        delivery_limit: int | None = None,
        dead_letter_ttl: float | None = None,
        max_message_size: int | None = None,
        reconnect_wait: float | None = None,
        connect_timeout: float | None = None,
        consumer_timeout: float | None = None,
        persistent: bool | None = None,
        events: bool | None = None,
        max_priority: int | None = None,
        coalesce: int | None = None,
    ) -> None:
        # An argument left out comes from its ATASKS_* variable, else its default (settings).
        queue_type = settings.value("queue_type", queue_type)
        replies = settings.value("replies", replies)
        delivery_limit = settings.value("delivery_limit", delivery_limit)
        dead_letter_ttl = settings.value("dead_letter_ttl", dead_letter_ttl)
        max_message_size = settings.value("max_message_size", max_message_size)
        reconnect_wait = settings.value("reconnect_wait", reconnect_wait)
        connect_timeout = settings.value("connect_timeout", connect_timeout)
        consumer_timeout = settings.value("consumer_timeout", consumer_timeout)
        persistent = settings.value("persistent", persistent)
        events = settings.value("events", events)
        max_priority = settings.value("max_priority", max_priority)
        coalesce = settings.value("coalesce", coalesce)
        # Everything repr() shows is set before the base class binds the namespace.
        self.urls = parse_urls(url or settings.value("url"))
        self.url = self.urls[0]
        self.namespace = namespace
        self.events_enabled = events
        self.topology = Topology(
            namespace or DEFAULT,
            queue_type=queue_type,
            delivery_limit=delivery_limit,
            dead_letter_ttl=dead_letter_ttl,
            max_priority=max_priority,
        )
        self._link = Link(
            self.urls,
            connect_timeout=connect_timeout,
            reconnect_wait=reconnect_wait,
            events=events,
            max_message_size=max_message_size,
        )
        self._caller = Caller(
            self._link, self.topology, persistent=persistent, replies=replies, coalesce=coalesce
        )
        self._server = Server(
            self._link,
            self.topology,
            statistics=lambda: self.server_statistics() if self.server_statistics else None,
            consumer_timeout=consumer_timeout,
            ask=self._caller.ask,
            events=events,
        )
        self._tokens: AMQPTokens | None = None
        super().__init__(namespace=namespace)

    def __repr__(self) -> str:
        urls = ",".join(map(safe_url, self.urls))
        return f"AMQPTransport({urls!r}, namespace={self.namespace!r})"

    @property
    def closed(self) -> bool:
        return self._link.state is State.CLOSED

    @property
    def blocked_by(self) -> str | None:
        return self._link.pressure.reason

    @property
    def connected(self) -> bool:
        # Ready only once a (re)connection's consumers are back (the link's on_open callbacks).
        link = self._link
        return link.state is State.CONNECTED and link.is_ready

    async def queue_depths(self, names: list[str]) -> dict[str, dict[str, Any] | None]:
        """The request queue of each atask of ``names``: messages ready and consumers
        (``None`` where it does not exist), asked over this transport's connection."""
        channels = await self._link.ready()
        return await queue_depths(channels.connection, self.topology, names)

    def queue_name(self, atask_name: str) -> str:
        return self.topology.request_queue(atask_name)

    def destination(self, name: str) -> str:
        return self.queue_name(name)

    async def connect(self) -> None:
        await self._link.open()

    async def disconnect(self) -> None:
        if self._caller.closing or self.closed:
            return
        self._caller.closing = True  # no new calls; the connection still carries what is out
        try:
            await self._server.drain(0)
            await self._server.flush_events()
            await self._caller.finish_background(BACKGROUND_WAIT)
        finally:
            self._caller.watchdog.stop()
            await self._link.close()
            self._caller.fail_pending(NotConnected(f"{self!r} was disconnected"))

    def send_request(
        self, request: Request, on_frame: FrameListener | None = None
    ) -> Coroutine[Any, Any, Reply]:
        # The caller's coroutine itself: no coroutine around it, on every call.
        return self._caller.send_request(request, on_frame)

    def grant(self, call_id: str, credits: int) -> None:
        self._caller.grants.grant(call_id, credits)

    async def enqueue(self, request: Request) -> None:
        await self._caller.enqueue(request)

    async def broadcast(self, request: Request) -> None:
        await self._caller.broadcast(request)

    async def register_callback(self, name: str, handler: RequestHandler) -> None:
        await self._server.register(name, handler)

    async def unregister_callback(self, name: str) -> None:
        await self._server.unregister(name)

    async def drain(self, grace: float) -> None:
        await self._server.drain(grace)

    def set_capacity(self, capacity: Capacity) -> None:
        if capacity.limit > MAX_PREFETCH:
            raise ConfigurationError(
                f"concurrency {capacity.limit} is over {MAX_PREFETCH}, the most AMQP's prefetch "
                "can count"
            )
        self._server.set_capacity(capacity)

    async def publish_event(self, event: Event) -> None:
        if self.events_enabled:
            self._server.publish_event(event)

    def scheduler_seat(self) -> SchedulerSeat:
        return AMQPSeat(self._link, self.topology)

    def tokens(self) -> AMQPTokens:
        """Tokens as messages of quorum queues, held unacked (docs: guides/fleet-limits.md)."""
        if self._tokens is None:
            self._tokens = AMQPTokens(self._link, self.topology.namespace)
        return self._tokens


def parse_urls(url: str | Sequence[str]) -> list[str]:
    """Broker URLs from a list, or from one comma-separated string."""
    parts = url.split(",") if isinstance(url, str) else list(url)
    urls = [part.strip() for part in parts if part.strip()]
    if not urls:
        raise ConfigurationError("no broker URL given")
    return urls
