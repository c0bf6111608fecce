"""Typed use of the public API, checked by mypy (setup.cfg ``[mypy] files``), never run.

A decorated atask keeps its function's signature, with or without decorator arguments: each
``# type: ignore[...]`` below marks a call that must be an error, and strict mode's
``warn_unused_ignores`` fails the check if it is not.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import assert_type

import atasks
from atasks import ATask, Backoff, RemoteStream, Retry, StreamATask, atask
from atasks.codecs import Codec, PickleCodec, get_codec
from atasks.transport.base import LoopbackTransport, Transport, get_transport


@atask
async def plain(x: int, label: str = "") -> str:
    return f"{label}{x}"


@atask(name="usage.named", timeout=5)
async def named(x: int, *, scale: float = 1.0) -> float:
    return x * scale


@atask(namespace="usage")
def blocking(path: str) -> bytes:
    return path.encode()


@atask(retry=Retry(attempts=5, backoff=Backoff.exponential(0.1, jitter=1.0), on=OSError))
async def fetch(url: str) -> bytes:
    return url.encode()


@atask(mechanism="process", timeout=10)
def crunch(n: int) -> int:
    return n * n


@atask
async def rows(query: str) -> AsyncIterator[dict[str, int]]:
    yield {query: 1}


@atask(window=4, timeout=60)
async def chunks(size: int) -> AsyncIterator[bytes]:
    yield b"x" * size


async def streams() -> None:
    typed: StreamATask[[str], dict[str, int]] = rows
    assert_type(rows("q"), RemoteStream[dict[str, int]])
    async for row in rows("q"):
        assert_type(row, dict[str, int])
    async for chunk in chunks(3):
        assert_type(chunk, bytes)
    await rows("q")  # type: ignore[misc]
    chunks("3")  # type: ignore[arg-type]
    assert typed.window


def streams_from_sync_code() -> None:
    for item in atasks.iter_sync(chunks(1), timeout=5):
        assert_type(item, bytes)


async def calls() -> None:
    typed: ATask[[int], str] = plain  # the default of label makes it optional
    assert_type(typed.name, str)
    assert_type(await plain(1), str)
    assert_type(await named(2, scale=0.5), float)
    assert_type(await blocking("/tmp"), bytes)
    assert_type(await fetch("u"), bytes)
    assert_type(await crunch(3), int)
    await crunch("3")  # type: ignore[arg-type]
    await named("two")  # type: ignore[arg-type]
    await named(2, scale="big")  # type: ignore[arg-type]
    await plain()  # type: ignore[call-arg]
    assert inspect.iscoroutinefunction(named)


def unknown_option() -> None:
    atask(retries=3)  # type: ignore[call-overload]
    atask(retry=3)  # type: ignore[call-overload]
    atask(mechanism="fiber")  # type: ignore[call-overload]


async def set_up_as_in_2019() -> None:
    codec: Codec = PickleCodec("usage")
    assert get_codec("usage") is codec
    transport: Transport = LoopbackTransport("usage")
    await transport.connect()
    assert get_transport("usage") is transport
    assert_type(await PickleCodec(key="k").encode([1]), bytes)
    PickleCodec("usage", "key")  # type: ignore[call-arg]
    await atasks.get_router("usage").activate(transport)


class Outbox:
    pass


@atasks.handler(factory=lambda: Mailer(Outbox()))
class Mailer:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @atask
    async def send(self, to: str, *, subject: str = "") -> bool:
        return bool(to)

    @atask
    async def pages(self, n: int) -> AsyncIterator[int]:
        yield n


@atasks.handler
class Counter:
    @atask
    def bump(self) -> int:
        return 1


async def handlers() -> None:
    assert_type(await Mailer.send("a"), bool)
    assert_type(await Mailer(Outbox()).send("a", subject="s"), bool)
    assert_type(await Counter.bump(), int)
    assert_type(Mailer.pages(2), RemoteStream[int])
    await Mailer.send(3)  # type: ignore[arg-type]
    await Mailer.send()  # type: ignore[call-arg]
