"""A direct reply and the ack of its request leave in one write (``amqp/onewrite.py``), on a
real broker: what reaches the socket, that the caller gets the reply, and that the request is
acked for good; the public methods where a channel confirms its publishes; and a server
answering a lone call that way."""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader

import atasks
from atasks import atask
from atasks.transport.backends.amqp.onewrite import publish_and_ack

WAIT = 10.0
NS = "onewrite"


@atask(namespace=NS)
async def echo(value: str) -> str:
    return value


def _frames(data: bytes) -> list[Any]:
    frames = []
    while data:
        used, _, frame = pamqp.frame.unmarshal(data)
        frames.append(frame)
        data = data[used:]
    return frames


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[list[Any]]:
    """The frames of each write to a socket, from any connection of this test."""
    seen: list[list[Any]] = []
    transport = asyncio.selector_events._SelectorSocketTransport  # type: ignore[attr-defined]
    write = transport.write

    def spy(self: Any, data: bytes) -> None:
        if data[:4] != b"AMQP":  # the protocol header is no frame
            seen.append(_frames(bytes(data)))
        write(self, data)

    monkeypatch.setattr(transport, "write", spy)
    return seen


async def _request(url: str, *, confirms: bool) -> tuple[Any, ...]:
    """A caller consuming direct replies, a request it sent, and a server channel holding
    that request unacked."""
    caller = await aiormq.connect(url)
    server = await aiormq.connect(url)
    calls = await caller.channel()
    replies: asyncio.Queue[DeliveredMessage] = asyncio.Queue()

    async def on_reply(message: DeliveredMessage) -> None:
        replies.put_nowait(message)

    await calls.basic_consume("amq.rabbitmq.reply-to", on_reply, no_ack=True)
    queue = (await calls.queue_declare("", exclusive=False, auto_delete=False)).queue
    assert queue is not None
    await calls.basic_publish(
        b"question",
        routing_key=queue,
        properties=Basic.Properties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1"),
    )
    channel = await server.channel(publisher_confirms=confirms)
    delivered = await channel.basic_get(queue)
    assert delivered.body == b"question"
    return caller, server, channel, delivered, replies, queue


async def _answer(channel: Any, delivered: DeliveredMessage, body: bytes) -> None:
    """Reply ``body`` to ``delivered``'s caller and ack it."""
    await publish_and_ack(
        channel,
        body,
        routing_key=delivered.header.properties.reply_to,
        properties=Basic.Properties(correlation_id="c-1"),
        tags=[delivered.delivery_tag],
    )


async def _still_queued(url: str, queue: str) -> int:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        declared = await channel.queue_declare(queue, passive=True)
        count = declared.message_count or 0
        await channel.queue_delete(queue)
        return count
    finally:
        await connection.close()


async def test_a_direct_reply_and_its_ack_leave_in_one_write(
    amqp_url: str, writes: list[list[Any]]
) -> None:
    caller, server, channel, delivered, replies, queue = await _request(amqp_url, confirms=False)
    try:
        body = b"answer" * 30_000  # over the frame size: several body frames
        writes.clear()
        await _answer(channel, delivered, body)
        reply = await asyncio.wait_for(replies.get(), WAIT)
        assert reply.body == body
        assert reply.header.properties.correlation_id == "c-1"
        carrying = [frames for frames in writes if any(isinstance(f, Basic.Ack) for f in frames)]
        assert len(carrying) == 1  # the ack and the publish, together
        kinds = [type(frame) for frame in carrying[0]]
        assert kinds[:2] == [Basic.Publish, ContentHeader]
        assert set(kinds[2:-1]) == {ContentBody}
        assert len(kinds) > 4
        assert kinds[-1] is Basic.Ack
        assert carrying[0][-1].delivery_tag == delivered.delivery_tag
        await server.close()  # an unacked request would go back to its queue now
    finally:
        await caller.close()
        await server.close()
    assert await _still_queued(amqp_url, queue) == 0


async def test_a_confirming_channel_takes_the_public_methods(
    amqp_url: str, writes: list[list[Any]]
) -> None:
    caller, server, channel, delivered, replies, queue = await _request(amqp_url, confirms=True)
    try:
        writes.clear()
        await _answer(channel, delivered, b"answer")
        reply = await asyncio.wait_for(replies.get(), WAIT)
        assert reply.body == b"answer"
        acks = [frames for frames in writes if any(isinstance(f, Basic.Ack) for f in frames)]
        assert [[type(frame) for frame in frames] for frames in acks] == [[Basic.Ack]]
        await server.close()
    finally:
        await caller.close()
        await server.close()
    assert await _still_queued(amqp_url, queue) == 0


async def test_a_closed_channel_is_refused(amqp_url: str, writes: list[list[Any]]) -> None:
    caller, server, channel, delivered, _replies, queue = await _request(amqp_url, confirms=False)
    try:
        await channel.close()
        writes.clear()
        with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
            await _answer(channel, delivered, b"answer")
        assert not [frames for frames in writes if frames]  # nothing went
    finally:
        await caller.close()
        await server.close()
    await _still_queued(amqp_url, queue)  # deletes it


async def test_a_server_answers_a_lone_call_and_acks_it_in_one_write(
    amqp_url: str, writes: list[list[Any]]
) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    assert await asyncio.wait_for(echo("warm"), WAIT) == "warm"
    writes.clear()
    assert await asyncio.wait_for(echo("lone"), WAIT) == "lone"
    replies = [
        frames
        for frames in writes
        if isinstance(frames[0], Basic.Publish)
        and frames[0].routing_key.startswith("amq.rabbitmq.reply-to.")
    ]
    assert len(replies) == 1
    assert [type(frame) for frame in replies[0]] == [
        Basic.Publish,
        ContentHeader,
        ContentBody,
        Basic.Ack,
    ]
