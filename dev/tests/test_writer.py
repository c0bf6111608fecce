"""Frames handed to the socket as they are sent (``amqp/writer.py``): on a real broker, a frame
with nothing ahead of it is written by its sender, not queued for aiormq's writer task; frames
that must wait behind others still leave in the order they were sent."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import cast

import aiormq
import pytest
from aiormq.abc import DeliveredMessage

import atasks
from atasks import atask
from atasks.transport.backends.amqp import AMQPTransport
from atasks.transport.backends.amqp.writer import write_at_once

WAIT = 10.0
NS = "writer"


@atask(namespace=NS)
async def echo(value: str) -> str:
    return value


@pytest.fixture
async def connection(amqp_url: str) -> AsyncIterator[aiormq.Connection]:
    opened = await aiormq.connect(amqp_url)
    yield opened
    await opened.close()


async def _unconfirmed(connection: aiormq.Connection) -> aiormq.Channel:
    return cast(aiormq.Channel, await connection.channel(publisher_confirms=False))


async def _exclusive_queue(channel: aiormq.Channel) -> str:
    declared = (await channel.queue_declare("", exclusive=True)).queue
    assert declared is not None
    return declared


async def _queued_after_publish(connection: aiormq.Connection) -> int:
    """Frames left on the write queue right after an unconfirmed publish returns."""
    channel = await _unconfirmed(connection)
    queue = await _exclusive_queue(channel)
    await channel.basic_publish(b"one", routing_key=queue, wait=False)
    return connection.write_queue.qsize()


async def test_a_frame_with_nothing_ahead_is_written_by_its_sender(
    connection: aiormq.Connection,
) -> None:
    assert write_at_once(connection)
    assert await _queued_after_publish(connection) == 0


async def test_aiormq_queues_every_frame_for_its_writer_task(
    connection: aiormq.Connection,
) -> None:
    # What write_at_once saves: if aiormq ever writes frames at once itself, this fails and the
    # module can go.
    assert await _queued_after_publish(connection) == 1


async def test_frames_queued_behind_others_leave_in_the_order_sent(
    connection: aiormq.Connection,
) -> None:
    assert write_at_once(connection)
    channels = [await _unconfirmed(connection) for _ in range(3)]
    queues = [await _exclusive_queue(channel) for channel in channels]
    bodies = [str(number).encode() for number in range(200)]
    # Three channels publishing at once, every third frame waiting for its write to drain:
    # those go through the writer task, and the frames the other channels send while it
    # drains queue up behind them.
    await asyncio.gather(
        *(
            channel.basic_publish(body, routing_key=queue, wait=number % 3 == 0)
            for number, body in enumerate(bodies)
            for channel, queue in zip(channels, queues, strict=True)
        )
    )
    received: dict[str, list[bytes]] = {queue: [] for queue in queues}
    done = asyncio.get_running_loop().create_future()

    async def on_message(message: DeliveredMessage) -> None:
        received[message.routing_key or ""].append(message.body)
        if sum(map(len, received.values())) == len(bodies) * len(queues) and not done.done():
            done.set_result(None)

    for channel, queue in zip(channels, queues, strict=True):
        await channel.basic_consume(queue, on_message, no_ack=True)
    await asyncio.wait_for(done, WAIT)
    assert received == {queue: bodies for queue in queues}


async def test_a_connection_not_open_is_left_as_it_is() -> None:
    unopened = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/")
    queue = unopened.write_queue
    assert not write_at_once(unopened)
    assert type(queue) is asyncio.Queue


async def test_the_transport_writes_its_frames_at_once(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    transport = atasks.get_transport(NS)
    assert isinstance(transport, AMQPTransport)
    channels = transport._link.live()
    assert channels is not None
    raw = channels.connection.transport
    assert raw is not None
    assert type(raw.connection.write_queue) is not asyncio.Queue
    for value in ("one", "two", "three"):
        assert await asyncio.wait_for(echo(value), WAIT) == value
