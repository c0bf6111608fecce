"""The call path's shortcuts keep their promises: what a router and an atask keep between calls
follows a codec or transport replaced in their namespace, synchronous codecs fail as clearly as
asynchronous ones, and the common shapes of payloads and atasks are served like the others."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import atasks
from atasks import atask
from atasks.codecs import JSONCodec, PickleCodec
from atasks.errors import DecodeError, EncodeError, TransportError
from atasks.router import get_router
from atasks.transport.base import LoopbackTransport, Reply, Request

NS = "hot-path"


@atask(namespace=NS)
async def echo(value: Any) -> Any:
    return value


@atask(namespace=NS)
async def wait_for(event_name: str) -> str:
    await _events[event_name].wait()
    return event_name


_events: dict[str, asyncio.Event] = {}


class CountingJSON(JSONCodec):
    """JSON, counting what it encodes and decodes."""

    def __init__(self, namespace: str | None = NS) -> None:
        self.dumped = self.loaded = 0
        super().__init__(namespace)

    def dumps(self, obj: Any) -> bytes:
        self.dumped += 1
        return super().dumps(obj)

    def loads(self, content: bytes) -> Any:
        self.loaded += 1
        return super().loads(content)


class CountingLoopback(LoopbackTransport):
    """A loopback transport counting the requests sent through it."""

    def __init__(self, namespace: str | None = NS) -> None:
        self.sent = 0
        super().__init__(namespace)

    async def send_request(self, request: Any, on_frame: Any = None) -> Any:
        self.sent += 1
        return await super().send_request(request, on_frame)


async def test_a_call_uses_the_codec_its_namespace_has_now() -> None:
    await atasks.setup("loopback", codec="pickle", namespace=NS)
    assert await echo((1, 2)) == (1, 2)  # pickle keeps the tuple
    counting = CountingJSON()
    assert await echo((1, 2)) == [1, 2]  # JSON makes it a list: the new codec carried it
    # Both ways, on both sides: arguments and result each encoded once and decoded once.
    assert (counting.dumped, counting.loaded) == (2, 2)
    PickleCodec(namespace=NS)
    assert await echo((3,)) == (3,)
    assert (counting.dumped, counting.loaded) == (2, 2)


async def test_a_call_goes_through_the_transport_its_namespace_has_now() -> None:
    router = await atasks.setup("loopback", namespace=NS)
    assert await echo(1) == 1
    newer = CountingLoopback()
    await newer.connect()
    await router.activate(newer)
    assert await echo(2) == 2
    assert newer.sent == 1
    atasks.reset(NS)  # forgotten, then set up again: the atask finds the new router
    again = await atasks.setup("loopback", namespace=NS)
    assert get_router(NS) is again is not router
    assert await echo(3) == 3
    assert newer.sent == 1


class SyncBroken(PickleCodec):
    """A synchronous codec that fails on a marked value, as a user's codec might."""

    def dumps(self, obj: Any) -> bytes:
        if "refuse to encode" in repr(obj):
            raise ValueError("cannot encode this one")
        return super().dumps(obj)

    def loads(self, content: bytes) -> Any:
        obj = super().loads(content)
        if "refuse to decode" in repr(obj):
            raise ValueError("cannot decode this one")
        return obj


async def test_a_synchronous_codec_that_fails_is_a_clear_error_to_the_right_party() -> None:
    await atasks.setup("loopback", codec=SyncBroken(NS), namespace=NS)
    with pytest.raises(EncodeError, match="cannot encode this one"):
        await echo("refuse to encode")  # the caller's own arguments: raised before sending
    with pytest.raises(DecodeError, match="cannot decode this one"):
        await echo("refuse to decode")  # the server cannot read them: its reply says why
    assert await echo("fine") == "fine"


class _FunctionLike:
    """An object ``inspect`` counts as a coroutine function that returns a plain future."""

    __name__ = __qualname__ = "function_like"
    __module__ = __name__
    __defaults__ = None
    __kwdefaults__ = None
    __annotations__: dict[str, Any] = {}
    __code__ = types.FunctionType(
        compile("async def function_like(value): pass", "<test>", "exec").co_consts[0], {}
    ).__code__

    def __call__(self, value: Any) -> Awaitable[Any]:
        future = asyncio.get_running_loop().create_future()
        future.set_result(("from a future", value))
        return future


async def test_an_async_atask_that_returns_another_awaitable_is_awaited() -> None:
    future_returning = atask(name="hot-path.future", namespace=NS)(_FunctionLike())
    assert future_returning.mechanism == "async"
    await atasks.setup("loopback", namespace=NS)
    assert await future_returning(5) == ("from a future", 5)


async def _send(request: Request) -> Reply:
    transport = atasks.get_transport(NS)
    assert isinstance(transport, LoopbackTransport)
    return await asyncio.wait_for(transport.send_request(request), 10)


@pytest.mark.parametrize(
    ("payload", "refusal"),
    [
        ([[1], {}, "elsewhere", "call-1"], "replayed or misrouted"),
        ([[1], {}, echo.name, "call-2"], "replayed or misrouted"),
        ([[1], {}, echo.name], "must carry"),
        ([(1,), {}, echo.name, "call-1"], None),  # a tuple of arguments: served all the same
        ([[1], {"value": 2}, echo.name, "call-1"], "multiple values"),
        ([[], {"value": 2}, echo.name, "call-1"], None),
        ([[1], {1: 2}, echo.name, "call-1"], "must carry"),
        ([[1], [], echo.name, "call-1"], "must carry"),
    ],
)
async def test_payloads_of_every_shape_are_checked(payload: list[Any], refusal: str | None) -> None:
    await atasks.setup("loopback", namespace=NS)
    codec = atasks.get_codec(NS)
    request = Request(
        name=echo.name,
        call_id="call-1",
        content_type=codec.content_type,
        body=codec.dumps(payload),
    )
    reply = await _send(request)
    if refusal is None:
        assert reply.ok, reply.error_message
        assert codec.loads(reply.body) in (1, 2)
    else:
        assert not reply.ok
        assert refusal in reply.error_message


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0)


async def test_deactivating_waits_for_loopback_calls_in_flight_then_stops_the_rest() -> None:
    router = await atasks.setup("loopback", namespace=NS)
    transport = atasks.get_transport(NS)
    assert isinstance(transport, LoopbackTransport)
    _events.clear()
    _events["finishes"] = asyncio.Event()
    _events["outlasts"] = asyncio.Event()
    finishes = asyncio.create_task(wait_for("finishes"))
    outlasts = asyncio.create_task(wait_for("outlasts"))
    await _until(lambda: len(transport._calls) == 2)
    stopping = asyncio.create_task(router.deactivate(grace=30))
    await _until(lambda: len(transport._watched) == 2)  # drain waits for both calls
    _events["finishes"].set()
    assert await asyncio.wait_for(finishes, 10) == "finishes"
    assert not stopping.done()
    _events["outlasts"].set()
    assert await asyncio.wait_for(outlasts, 10) == "outlasts"
    await asyncio.wait_for(stopping, 10)
    assert not transport._calls
    assert not transport._watched

    await router.activate(transport)
    _events["never"] = asyncio.Event()
    stranded = asyncio.create_task(wait_for("never"))
    await _until(lambda: len(transport._calls) == 1)
    await asyncio.wait_for(router.deactivate(grace=0), 10)  # no grace: stopped at once
    with pytest.raises(TransportError, match="stopped before"):
        await asyncio.wait_for(stranded, 10)
    assert not transport._calls
    assert not transport._watched


@atask(namespace=NS, window=8)
async def count_to(n: int) -> AsyncIterator[int]:
    for i in range(n):
        yield i


@atask(namespace=NS)
async def after_a_turn(value: int) -> int:
    await asyncio.sleep(0)
    return value


async def test_a_loopback_call_leaves_nothing_behind_however_it_ends() -> None:
    """Calls that finish in their first step (most), that suspend, that fail, and streams: once
    over, the transport keeps nothing of them."""
    await atasks.setup("loopback", namespace=NS)
    transport = get_router(NS).transport
    assert isinstance(transport, LoopbackTransport)
    assert await echo(1) == 1
    assert await after_a_turn(2) == 2
    assert [i async for i in count_to(3)] == [0, 1, 2]
    with pytest.raises(EncodeError):
        await echo(lambda: None)
    assert await asyncio.gather(echo(3), after_a_turn(4)) == [3, 4]
    assert (transport._credits, transport._calls) == ({}, {})


class RecordingLoopback(LoopbackTransport):
    """A loopback transport that keeps every request it is sent."""

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self.requests: list[Request] = []

    async def send_request(self, request: Any, on_frame: Any = None) -> Any:
        self.requests.append(request)
        return await super().send_request(request, on_frame)


@atask(namespace="hot-path-fields")
async def outer(value: int) -> int:
    return await inner(value)


@atask(namespace="hot-path-fields")
async def inner(value: int) -> int:
    return value + 1


async def test_each_value_of_a_request_made_on_the_hot_path_is_in_its_own_field() -> None:
    """The caller builds a request by position (the cheap way): a field added or moved in
    ``Request`` must not shift a value into its neighbour."""
    ns = "hot-path-fields"
    transport = RecordingLoopback(ns)
    await atasks.setup(transport, namespace=ns, serve=True)
    progress = atasks.observe_progress(lambda report: None)
    async with atasks.deadline(30), atasks.priority(7), progress:
        assert await outer(1) == 2
    first, nested = transport.requests
    assert (first.name, nested.name) == (outer.name, inner.name)
    assert first.parent_id is None
    assert nested.parent_id == first.call_id
    assert first.call_id != nested.call_id
    assert first.content_type.startswith(PickleCodec.content_type)
    assert first.deadline is not None
    assert nested.deadline == first.deadline
    assert first.priority == nested.priority == 7
    assert first.wants_progress
    assert not nested.wants_progress
    assert first.window == nested.window == 0
    assert isinstance(first.body, bytes)
    assert dict(first.headers) == {}
    assert not first.slot_taken
    assert first.credits is None
