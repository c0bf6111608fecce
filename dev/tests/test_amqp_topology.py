"""What atasks declares on a broker, and what it does with what it finds there."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest

import atasks
from atasks import atask
from atasks.errors import ConfigurationError
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import AMQPTransport


@atask(name="thing", namespace="mismatch")
async def thing() -> str:
    return "done"


@atask(name="plain", namespace="shapes")
async def plain() -> int:
    return 7


async def test_an_existing_queue_with_other_arguments_is_a_clear_error(amqp_url: str) -> None:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue("atasks.mismatch.thing", durable=True)  # an old, classic one
    try:
        with pytest.raises(ConfigurationError) as raised:
            await atasks.setup("amqp", url=amqp_url, namespace="mismatch", serve=True)
        message = str(raised.value)
        assert "'atasks.mismatch.thing'" in message
        assert "x-" in message  # names an argument that differs
        assert "delete_queue" in message
        assert "queue_type" in message
        await atasks.close("mismatch")
        # The documented way to keep it: the queue type it has.
        await atasks.setup(
            "amqp", url=amqp_url, namespace="mismatch", serve=True, queue_type="classic"
        )
        assert await thing() == "done"
    finally:
        await atasks.close("mismatch")
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete("atasks.mismatch.thing")


async def test_no_transient_shared_queues(rabbit: RabbitNode, amqp_url: str) -> None:
    """RabbitMQ 4.3 closes the connection of a client that declares a non-durable queue that
    is not exclusive: every queue atasks declares is durable or exclusive."""
    await atasks.setup("amqp", url=amqp_url, namespace="shapes", serve=True, events=True)
    assert await plain() == 7
    listing = await asyncio.to_thread(
        rabbit.ctl, "list_queues", "name", "durable", "exclusive", "--no-table-headers", "-q"
    )
    rows = [line.split("\t") for line in listing.splitlines() if line.strip()]
    assert rows
    for name, durable, exclusive in rows:
        assert durable == "true" or exclusive == "true", name
    durable_names = {name for name, durable, _ in rows if durable == "true"}
    assert {"atasks.shapes.plain", "atasks-dead.shapes", "atasks-dead.shapes.notify"} <= (
        durable_names
    )


async def test_concurrent_connects_open_one_connection(rabbit: RabbitNode, amqp_url: str) -> None:
    def connections() -> int:
        return len(rabbit.ctl("list_connections", "pid", "--no-table-headers", "-q").split())

    before = await asyncio.to_thread(connections)
    transport = AMQPTransport(amqp_url, namespace=None)
    await asyncio.gather(*(transport.connect() for _ in range(5)))
    try:
        assert await asyncio.to_thread(connections) == before + 1
    finally:
        await transport.disconnect()


def test_repr_never_fails_and_hides_the_password() -> None:
    transport = AMQPTransport("amqp://user:secret@127.0.0.1:5672/", namespace=None)
    assert "secret" not in repr(transport)
    with pytest.raises(ConfigurationError, match="queue_type"):
        AMQPTransport(namespace=None, queue_type="stream")  # type: ignore[arg-type]


@atask(name="direct.progress", namespace="direct")
async def reports() -> int:
    await atasks.progress(1, 2)
    await atasks.progress(2, 2)
    return 2


async def test_direct_replies_still_work(rabbit: RabbitNode, amqp_url: str) -> None:
    """replies="direct": RabbitMQ's direct reply-to (rebuilt in 4.2) carries replies, errors
    and progress; no reply queue of the caller's own is declared."""
    await atasks.setup("amqp", url=amqp_url, namespace="direct", serve=True, replies="direct")
    seen: list[float] = []
    async with atasks.observe_progress(lambda p: seen.append(p.done)):
        assert await reports() == 2
    assert seen == [1, 2]
    listing = await asyncio.to_thread(rabbit.ctl, "list_queues", "name", "-q")
    assert not [name for name in listing.split() if name.startswith("atasks-replies.direct.")]
