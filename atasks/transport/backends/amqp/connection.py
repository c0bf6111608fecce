"""One broker connection and its channels, opened once however many callers ask, and opened
again, with jittered back-off, whenever the broker closes it or one of its channels."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import logging
import random
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection

from atasks.errors import ATasksError, NotConnected, TransportError
from atasks.transport.backends.amqp.pressure import Pressure
from atasks.transport.backends.amqp.writer import write_at_once

log = logging.getLogger("atasks.amqp")

CONNECTION_ERRORS = (
    aiormq.exceptions.AMQPError,
    aiormq.exceptions.ChannelInvalidStateError,
    ConnectionError,
    OSError,
)
TLS_SET_UP_ERRORS = (ssl.SSLCertVerificationError, FileNotFoundError)
RECONNECT_FIRST = 0.1
RECONNECT_MAX = 5.0
MIB = 1024 * 1024


class State(enum.Enum):
    NEW = "new"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CLOSED = "closed"


@dataclass(frozen=True, eq=False)
class Channels:
    """The channels of one connection. The hot paths use the aiormq channels underneath
    aio-pika's: aio-pika's message objects cost more than the rest of a call. Each is equal
    only to itself (a key of the calls ready to go to it, hashed on every call)."""

    connection: AbstractConnection
    calls: AbstractChannel  # requests out, replies and dead-letter notices in, control
    calls_raw: aiormq.abc.AbstractChannel  # publisher confirms: whatever must be confirmed
    serve_raw: aiormq.abc.AbstractChannel  # request consumers, acks, direct replies: unconfirmed
    events_raw: aiormq.abc.AbstractChannel | None


OnOpen = Callable[[Channels], Awaitable[None]]


class Link:
    """Keeps one connection to the broker up, failing over between the nodes of a cluster.

    ``urls`` are tried in turn, starting after the one that was lost. ``on_open`` callbacks run,
    in order, on every new connection before it counts as ready: a failing one fails the connect
    (first time) or the attempt (reconnect). ``on_lost`` callbacks run when a live connection is
    lost.
    """

    def __init__(
        self,
        urls: list[str],
        *,
        connect_timeout: float,
        reconnect_wait: float,
        events: bool,
        max_message_size: int | None = None,
    ) -> None:
        if not urls:
            raise ValueError("no broker URL")
        self.configured_max_message_size = max_message_size
        self.broker_version = ""
        self._max_message_size = 0
        self._learn_version("")
        self.lost_because: BaseException | None = None  # why the last connection ended
        self.urls = urls
        self.url = urls[0]  # the one connected to, or tried last
        self.connect_timeout = connect_timeout
        self.reconnect_wait = reconnect_wait
        self.events = events
        self.state = State.NEW
        self.channels: Channels | None = None
        self.on_open: list[OnOpen] = []
        self.on_lost: list[Callable[[], None]] = []
        self._ready = asyncio.Event()
        self._changed = asyncio.Event()  # set, then replaced, at every new connection
        self._opening = asyncio.Lock()
        self._reconnector: asyncio.Task[None] | None = None
        self._closers: set[asyncio.Task[None]] = set()
        self.pressure = Pressure(lambda: self.safe_url)

    @property
    def safe_url(self) -> str:
        return safe_url(self.url)

    @property
    def safe_urls(self) -> str:
        return ",".join(map(safe_url, self.urls))

    @property
    def is_ready(self) -> bool:
        return self._ready.is_set()

    @property
    def max_message_size(self) -> int:
        """The largest message the broker takes: as configured, else its version's default
        (RabbitMQ 4.x: 16 MiB; 3.x: 128 MiB)."""
        return self._max_message_size

    @property
    def broker_major(self) -> int | None:
        """The broker's major version, once connected (None if it did not say)."""
        major = self.broker_version.split(".", 1)[0]
        return int(major) if major.isdigit() else None

    def _learn_version(self, version: str) -> None:
        self.broker_version = version
        if self.configured_max_message_size is not None:
            self._max_message_size = self.configured_max_message_size
        else:
            major = self.broker_major
            self._max_message_size = 128 * MIB if major is not None and major < 4 else 16 * MIB

    async def open(self) -> None:
        """Connect, once: concurrent callers share the attempt; later calls return at once."""
        async with self._opening:
            if self.state is State.CLOSED:
                raise NotConnected(f"the connection to {self.safe_url} is closed")
            if self.state is not State.NEW:
                return
            try:
                await self._open()
            except ATasksError:
                raise
            except TimeoutError as exc:
                raise TransportError(
                    f"cannot connect to {self.safe_url}: timed out after "
                    f"{self.connect_timeout:g}s (the port answers, the broker does not)"
                ) from exc
            except CONNECTION_ERRORS as exc:
                raise TransportError(
                    f"cannot connect to {self.safe_url}: {describe(exc, self.url)}"
                ) from exc

    async def _open(self) -> None:
        """Connect to the first node that answers, starting with the current one."""
        start = self.urls.index(self.url)
        failure: BaseException | None = None
        for url in self.urls[start:] + self.urls[:start]:
            self.url = url
            try:
                await self._open_at(url)
                return
            except ATasksError:
                raise
            except (TimeoutError, *CONNECTION_ERRORS) as exc:
                failure = exc
                if len(self.urls) > 1:
                    log.debug("cannot connect to %s: %s", safe_url(url), describe(exc, url))
        assert failure is not None
        raise failure

    def _next_url(self) -> None:
        """After losing a node, try the next one first."""
        self.url = self.urls[(self.urls.index(self.url) + 1) % len(self.urls)]

    async def _open_at(self, url: str) -> None:
        connection = await aio_pika.connect(url, timeout=self.connect_timeout)
        try:
            if connection.transport is not None:
                properties = connection.transport.connection.server_properties
                self._learn_version(str(properties.get("version") or ""))
                self.pressure.watch(connection.transport.connection)
                write_at_once(connection.transport.connection)
            calls = await connection.channel(publisher_confirms=True, on_return_raises=True)
            # Unconfirmed: a direct reply and then the ack of its request go on this one
            # channel, which the broker handles in order; a confirm would add a round trip to
            # every call and promise nothing more (see server/settlement.py).
            serve = await connection.channel(publisher_confirms=False)
            events_raw = None
            if self.events:
                events = await connection.channel(publisher_confirms=False)
                events_raw = await events.get_underlay_channel()
            channels = Channels(
                connection=connection,
                calls=calls,
                calls_raw=await calls.get_underlay_channel(),
                serve_raw=await serve.get_underlay_channel(),
                events_raw=events_raw,
            )
            self.channels = channels
            for callback in self.on_open:
                await callback(channels)
        except BaseException:
            self.channels = None
            with contextlib.suppress(Exception):
                await connection.close()
            raise
        connection.close_callbacks.add(self._on_connection_closed)
        for channel in (calls, serve):
            channel.close_callbacks.add(self._on_channel_closed)
        self.state = State.CONNECTED
        self.lost_because = None
        self._ready.set()
        self._changed.set()
        self._changed = asyncio.Event()

    def live(self) -> Channels | None:
        """The live channels now, or ``None`` (then ``ready()`` waits for them)."""
        if self._ready.is_set() and self.state is not State.CLOSED:
            return self.channels
        return None

    async def ready(self) -> Channels:
        """The live channels; waits up to ``reconnect_wait`` for a lost connection to return."""
        if self.state is State.NEW:
            raise NotConnected("not connected: await transport.connect() first")
        if not self._ready.is_set():
            if self.state is State.CLOSED:
                raise NotConnected("the transport was disconnected")
            try:
                async with asyncio.timeout(self.reconnect_wait):
                    await self._ready.wait()
            except TimeoutError:
                raise TransportError(
                    f"no connection to the broker at {self.safe_url} for {self.reconnect_wait:g}s"
                ) from None
        if self.state is State.CLOSED or self.channels is None:  # close() woke us
            raise NotConnected("the transport was disconnected")
        return self.channels

    async def renewed(self, old: Channels) -> Channels:
        """Channels other than ``old``, which just failed: waits for the reconnection."""
        deadline = asyncio.get_running_loop().time() + self.reconnect_wait
        while True:
            channels = await self.ready()
            if channels is not old:
                return channels
            try:
                async with asyncio.timeout_at(deadline):
                    await self._changed.wait()
            except TimeoutError:
                raise TransportError(
                    f"no working connection to the broker at {self.safe_url} for "
                    f"{self.reconnect_wait:g}s"
                ) from None

    def lost(self, channels: Channels) -> bool:
        """Whether the connection of ``channels`` is gone (what failed on it may work on the
        next one, ``renewed``), rather than open with one of its channels refused."""
        if self.channels is not channels:
            return True
        underlying = channels.connection.transport
        return underlying is None or underlying.connection.is_closed

    def _on_connection_closed(self, _sender: Any, exc: BaseException | None) -> None:
        if self.state is not State.CONNECTED:
            return
        if self.lost_because is None:  # not closed by us over a channel the broker closed
            self.lost_because = exc
        log.warning("lost the broker connection (%s); reconnecting", describe(exc) or "closed")
        self._next_url()
        self.pressure.lost()
        self.state = State.RECONNECTING
        self._ready.clear()
        self.channels = None
        for callback in self.on_lost:
            callback()
        self._reconnector = asyncio.get_running_loop().create_task(self._reconnect())

    def _on_channel_closed(self, _sender: Any, exc: BaseException | None) -> None:
        # The broker closes a channel, not the connection, on e.g. a consumer timeout: start
        # over with a new connection rather than go on half-working.
        channels = self.channels
        if self.state is State.CONNECTED and channels is not None:
            self.lost_because = exc
            log.warning("the broker closed a channel (%s); reconnecting", describe(exc))
            task = asyncio.get_running_loop().create_task(_quietly_close(channels.connection))
            self._closers.add(task)
            task.add_done_callback(self._closers.discard)

    async def _reconnect(self) -> None:
        delay = RECONNECT_FIRST
        while self.state is State.RECONNECTING:
            try:
                await self._open()
            except Exception as exc:  # keep trying, whatever the failure
                wait = random.uniform(delay / 2, delay)  # jitter: servers do not return in step
                log.debug("reconnect failed: %s; next try in %.2fs", describe(exc), wait)
                await asyncio.sleep(wait)
                delay = min(delay * 2, RECONNECT_MAX)
            else:
                log.warning("reconnected to the broker")
                return

    async def close(self) -> None:
        """Close for good; wakes everything waiting for the connection."""
        self.state = State.CLOSED
        reconnector, self._reconnector = self._reconnector, None
        if reconnector is not None:
            reconnector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reconnector
        self._ready.set()
        self._changed.set()
        channels, self.channels = self.channels, None
        if channels is not None:
            await _quietly_close(channels.connection)


async def wait_for_broker(
    connect: Callable[[], Awaitable[None]], urls: list[str], within: float
) -> None:
    """Await ``connect()``, trying again with jittered back-off for up to ``within`` seconds
    while the broker is not there (a server started before it). Says so once in the log. A
    failure that waiting cannot mend (a wrong password, a missing virtual host), or the last
    one when the time is up, is raised."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    delay = RECONNECT_FIRST
    waiting = False
    while True:
        try:
            await connect()
        except TransportError as exc:
            left = started + within - loop.time()
            if not may_come_up(exc.__cause__):
                raise
            if left <= 0:
                if not waiting:
                    raise
                raise TransportError(f"{exc}; waited {within:g}s for it") from exc.__cause__
            if not waiting:
                waiting = True
                where = ",".join(map(safe_url, urls))
                reason = describe(exc.__cause__, urls[0])
                log.warning("waiting for the broker at %s up to %gs: %s", where, within, reason)
            await asyncio.sleep(min(random.uniform(delay / 2, delay), left))
            delay = min(delay * 2, RECONNECT_MAX)
        else:
            if waiting:
                log.info("the broker is there, after %.1fs", loop.time() - started)
            return


def may_come_up(exc: BaseException | None) -> bool:
    """Whether a failure to connect may pass once the broker is up: refused, unreachable, not
    answering; not a refused login or virtual host, nor a TLS set-up that is wrong (a
    certificate its CA did not sign, a missing file)."""
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError) or tls_set_up_wrong(exc):
        return False
    if _vhost_refused(str(exc)):
        return False
    return isinstance(exc, (TimeoutError, *CONNECTION_ERRORS))


def tls_set_up_wrong(exc: BaseException | None) -> bool:
    """Whether ``exc`` or what caused it (aiormq wraps it) is a TLS set-up error."""
    seen = 0
    while exc is not None and seen < 5:
        if isinstance(exc, TLS_SET_UP_ERRORS):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _vhost_refused(text: str) -> bool:
    return "Connection.Close" in text and "Connection.OpenOk" in text


async def _quietly_close(connection: AbstractConnection) -> None:
    with contextlib.suppress(Exception):
        await connection.close()


def describe(exc: BaseException | None, url: str | None = None) -> str:
    """A broker or socket error in one line that says what happened."""
    if exc is None:
        return ""
    text = str(exc).strip()
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return f"access refused (wrong user or password?): {text}"
    code = getattr(exc, "errno", None)
    if isinstance(exc, ConnectionRefusedError) or code == errno.ECONNREFUSED:
        return "connection refused (is the broker running on that port?)"
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, FileNotFoundError):  # when connecting: a file the TLS context reads
        return f"a TLS file named in the URL (cafile, certfile, keyfile) is missing: {text}"
    if is_consumer_timeout(exc):
        return (
            "the broker's consumer timeout: a call was held longer than it allows; give "
            "AMQPTransport(consumer_timeout=...) or --consumer-timeout the broker's value"
        )
    if _vhost_refused(text):  # closed by the broker while opening
        vhost = urllib.parse.unquote(urllib.parse.urlsplit(url or "").path[1:]) or "/"
        return (
            f"the broker refused virtual host {vhost!r} (it does not exist, or this user may "
            "not use it)"
        )
    if not text or text == "None":
        return type(exc).__name__
    return text.splitlines()[0]


def is_consumer_timeout(exc: BaseException | None) -> bool:
    """Whether the broker closed a channel for a delivery held past its consumer timeout."""
    text = str(exc)
    return "delivery acknowledgement" in text and "timed out" in text


def safe_url(url: str) -> str:
    """``url`` without its password."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
