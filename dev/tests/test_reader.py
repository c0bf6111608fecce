"""Deliveries taken in aiormq's channel reader (``amqp/reader.py``), on a real broker: a
callback installed that way runs in one long-lived task for every delivery, where aiormq's
own wrapper starts a task per delivery; a server's requests and a caller's replies are taken
that way."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import aiormq
import pytest
from aiormq.abc import DeliveredMessage

import atasks
from atasks import atask
from atasks.transport.backends.amqp.client import Caller
from atasks.transport.backends.amqp.reader import consume_in_reader, nothing

WAIT = 10.0
NS = "reader"


@atask(namespace=NS)
async def echo(value: str) -> str:
    return value


async def _deliver_two(url: str, *, in_reader: bool) -> list[asyncio.Task[Any] | None]:
    """The task current in a consumer's callback, for each of two deliveries."""
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        queue = (await channel.queue_declare("", exclusive=True)).queue
        assert queue is not None
        seen: list[asyncio.Task[Any] | None] = []
        both = asyncio.get_running_loop().create_future()

        def on_message(message: DeliveredMessage) -> Any:
            seen.append(asyncio.current_task())
            if len(seen) == 2:
                both.set_result(None)
            return nothing()

        if in_reader:
            await consume_in_reader(channel, queue, on_message, no_ack=True)
        else:
            await channel.basic_consume(queue, on_message, no_ack=True)
        for body in (b"one", b"two"):
            await channel.basic_publish(body, routing_key=queue)
        await asyncio.wait_for(both, WAIT)
        return seen
    finally:
        await connection.close()


async def test_a_callback_in_the_reader_runs_in_one_task_for_every_delivery(
    amqp_url: str,
) -> None:
    first, second = await _deliver_two(amqp_url, in_reader=True)
    assert first is not None
    assert first is second


async def test_aiormqs_own_wrapper_starts_a_task_per_delivery(amqp_url: str) -> None:
    # What consume_in_reader avoids: if aiormq ever calls callbacks in its reader itself,
    # this fails and the module can go.
    first, second = await _deliver_two(amqp_url, in_reader=False)
    assert first is not None
    assert second is not None
    assert first is not second


@pytest.fixture
async def request_tasks() -> AsyncIterator[list[asyncio.Task[Any] | None]]:
    """For each task started whose coroutine serves a request, the task that started it."""
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[Any] | None] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        if getattr(coro, "__qualname__", "").endswith(("LoneRequests.serve", "Batches.serve")):
            started.append(asyncio.current_task())
        return asyncio.Task(coro, loop=loop, **kwargs)

    loop.set_task_factory(factory)
    yield started
    loop.set_task_factory(None)


async def test_a_server_takes_requests_and_a_caller_replies_in_their_readers(
    amqp_url: str,
    request_tasks: list[asyncio.Task[Any] | None],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reading: list[asyncio.Task[Any] | None] = []
    read = Caller._read_reply

    def spy(self: Caller, message: DeliveredMessage) -> None:
        reading.append(asyncio.current_task())
        read(self, message)

    monkeypatch.setattr(Caller, "_read_reply", spy)
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    for value in ("one", "two", "three"):
        assert await asyncio.wait_for(echo(value), WAIT) == value
    # Started by the same task each time (the serve channel's reader), not a task per request.
    assert len(request_tasks) == 3
    assert request_tasks[0] is not None
    assert len(set(map(id, request_tasks))) == 1
    assert len(reading) == 3
    assert reading[0] is not None
    assert len(set(map(id, reading))) == 1
