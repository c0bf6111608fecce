"""Remote async generators: ``async for row in export(query)`` runs ``export`` on one server.

Call side: ``RemoteStream`` makes one call whose frames are the items, and hands them out in
order; it grants the server credits as they are consumed. Serve side: ``serve_items`` runs the
generator, taking a credit before asking it for each item, so a server runs ahead of its
consumer by at most the window. The call's outcome is the number of items sent (or the
generator's exception), which the caller checks against what arrived: a stream is at most once
per item, and a gap is ``StreamInterrupted``, never a silent replay.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncGenerator, Coroutine, Sequence
from typing import Any, Generic, Protocol, TypeVar

from atasks.codecs.base import Codec, decode, encode
from atasks.errors import EncodeError, StreamInterrupted, TransportError
from atasks.events import ProgressRelay
from atasks.settings import DEFAULT_WINDOW
from atasks.transport.contract import Transport
from atasks.transport.messages import Frame, Item, Request


class Calls(Protocol):
    """The router that makes a stream's call."""

    @property
    def codec(self) -> Codec: ...

    def call(
        self,
        atask: Any,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        stream: Received | None = None,
    ) -> Coroutine[Any, Any, Any]: ...


Y = TypeVar("Y")


class Received:
    """What one stream's call has received and not yet handed out. Only the call (which fills
    it) and its ``RemoteStream`` (which empties it) hold it, so dropping the ``RemoteStream``
    is seen: it closes the stream."""

    __slots__ = ("call_id", "expected", "items", "lost", "relay", "transport", "waiter", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.items: deque[bytes] = deque()
        self.expected = 0  # the seq of the next item
        self.lost: str | None = None
        self.relay: ProgressRelay | None = None
        self.call_id = ""
        self.transport: Transport | None = None
        self.waiter: asyncio.Future[None] | None = None

    def opened(self, call_id: str, transport: Transport, relay: ProgressRelay | None) -> None:
        """The router made the call: where credits go, and where progress reports go."""
        self.call_id, self.transport, self.relay = call_id, transport, relay

    def __call__(self, frame: Frame) -> None:  # a FrameListener
        if isinstance(frame, Item):
            if self.lost is not None:
                return
            if frame.seq != self.expected:  # lost, or sent again: no item is handed out twice
                self.lost = f"item {self.expected} was expected and item {frame.seq} came"
            else:
                self.expected += 1
                self.items.append(frame.body)
            self.wake()
        elif self.relay is not None:
            self.relay(frame)

    def wake(self, *_: object) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class RemoteStream(Generic[Y]):
    """The items of one call of a streaming atask, in order: ``async for item in stream``.

    The call starts at the first iteration. ``break``, ``aclose()``, cancelling the iterating
    task, a deadline, or dropping the stream close the generator on its server. An exception
    raised there is raised here after the items sent before it, with a note of how many
    arrived; ``StreamInterrupted`` says the stream stopped before its end and will not resume.
    """

    def __init__(
        self, router: Calls, atask: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._router = router
        self._atask = atask
        self._args = args
        self._kwargs = kwargs
        self._received = Received(getattr(atask, "window", DEFAULT_WINDOW))
        self._call: asyncio.Task[Any] | None = None
        self._codec: Codec | None = None
        self._count = 0  # items handed out
        self._ungranted = 0
        self._closed = False

    @property
    def received(self) -> int:
        """How many items this side has handed out so far."""
        return self._count

    def __aiter__(self) -> RemoteStream[Y]:
        return self

    async def __anext__(self) -> Y:
        if self._closed:
            raise StopAsyncIteration
        received = self._received
        call = self._call
        if call is None:
            self._codec = self._router.codec
            call = self._call = asyncio.get_running_loop().create_task(
                self._router.call(self._atask, self._args, self._kwargs, stream=received)
            )
            call.add_done_callback(received.wake)
            call.add_done_callback(_retrieve)
        while not received.items and not call.done() and received.lost is None:
            received.waiter = asyncio.get_running_loop().create_future()
            try:
                await received.waiter
            except asyncio.CancelledError:
                self._stop()
                raise
            finally:
                received.waiter = None
        if received.items:
            return await self._next_item(received)
        self._stop()
        return self._outcome(call)

    async def _next_item(self, received: Received) -> Y:
        body = received.items.popleft()
        assert self._codec is not None
        try:
            item: Y = await decode(self._codec, body)
        except BaseException:
            self._stop()
            raise
        self._count += 1
        self._ungranted += 1
        if self._ungranted >= max(1, received.window // 2) and received.transport is not None:
            received.transport.grant(received.call_id, self._ungranted)
            self._ungranted = 0
        return item

    def _outcome(self, call: asyncio.Task[Any]) -> Y:
        """The end of the stream: its exception, or ``StopAsyncIteration`` when every item the
        server sent has arrived."""
        name, count = self._atask.name, self._count
        lost = self._received.lost
        if lost is not None:
            raise StreamInterrupted(
                f"the stream of atask {name!r} lost items after {count} arrived: {lost}", count
            )
        if call.cancelled():
            raise StreamInterrupted(
                f"the stream of atask {name!r} was cancelled after {count} items", count
            )
        exc = call.exception()
        if isinstance(exc, StreamInterrupted):
            raise StreamInterrupted(
                f"the stream of atask {name!r} stopped after {count} items arrived: {exc}", count
            ) from exc
        if exc is not None:
            exc.add_note(f"(raised after {count} items of the stream of atask {name!r} arrived)")
            raise exc
        sent = call.result()
        if sent != count:
            raise StreamInterrupted(
                f"the stream of atask {name!r} lost items: {count} of the {sent} sent arrived",
                count,
            )
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream: its generator is closed on its server. Idempotent."""
        self._closed = True
        call = self._call
        if call is not None and not call.done():
            call.cancel()
            await asyncio.wait({call})

    def _stop(self) -> None:
        self._closed = True
        call = self._call
        if call is not None and not call.done():
            call.cancel()

    def __del__(self) -> None:
        # Left by ``break`` or dropped: close the stream, as an abandoned generator would be.
        call = self._call
        if call is not None and not call.done() and not call.get_loop().is_closed():
            call.cancel()

    def __repr__(self) -> str:
        return f"<stream of atask {self._atask.name!r}, {self._count} items so far>"


def _retrieve(call: asyncio.Task[Any]) -> None:
    """Mark a stream call's exception as seen: a stream dropped after it failed is no error."""
    if not call.cancelled():
        call.exception()


async def serve_items(
    atask: Any,
    request: Request,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    codec: Codec,
) -> int:
    """Run a streaming atask's generator on this server, each item sent once its caller has
    granted a credit for it; returns how many items it sent. The generator is always closed."""
    emit, credits = request.emit, request.credits
    if emit is None or credits is None or not request.window:
        raise TransportError(
            f"atask {request.name!r} is a stream: iterate it with `async for` through a "
            "transport that carries streams"
        )
    generator: AsyncGenerator[Any, None] = atask.fn(*args, **kwargs)
    sent = 0
    try:
        while True:
            await credits.take()  # before the item is made: no work beyond the window
            try:
                item = await anext(generator)
            except StopAsyncIteration:
                return sent
            try:
                body = await encode(codec, item)
            except EncodeError as exc:
                raise EncodeError(
                    f"item {sent} of the stream of atask {request.name!r} cannot travel: {exc}"
                ) from exc
            await emit(Item(sent, body))
            sent += 1
    finally:
        await generator.aclose()
