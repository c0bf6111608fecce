"""Hostile and broken input on a live server's queue, and broken replies at a client."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import aio_pika
import pytest
import workload
from conftest import TEST_SECRET
from servers import Servers, delete_queues, wait_until_served

import atasks
from atasks.errors import DecodeError, TransportError
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import wire
from atasks.transport.base import Reply

pytestmark = pytest.mark.timeout(180)

CODEC = atasks.PickleCodec(None, key=TEST_SECRET)  # as this process and its servers sign
PICKLE = CODEC.content_type


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def malformed(rng: random.Random, reply_to: str, n: int) -> tuple[aio_pika.Message, bool]:
    """The n-th bad message, and whether the server can answer it."""
    good = CODEC.dumps([[], {}])
    kind = n % 8
    junk = rng.randbytes(rng.randint(0, 300))
    common = {"correlation_id": f"fuzz-{n}", "reply_to": reply_to}
    if kind == 0:  # garbage bytes
        return aio_pika.Message(junk, content_type=PICKLE, **common), True
    if kind == 1:  # a content type no codec here reads
        return aio_pika.Message(good, content_type="text/x-unknown", **common), True
    if kind == 2:  # nowhere to reply
        return aio_pika.Message(good, content_type=PICKLE, correlation_id=f"fuzz-{n}"), False
    if kind == 3:  # no call id
        return aio_pika.Message(good, content_type=PICKLE, reply_to=reply_to), False
    if kind == 4:  # truncated
        return aio_pika.Message(
            good[: rng.randint(0, len(good) - 1)], content_type=PICKLE, **common
        ), True
    if kind == 5:  # valid pickle, not [args, kwargs]
        return aio_pika.Message(CODEC.dumps(n), content_type=PICKLE, **common), True
    if kind == 6:  # over the server's size limit
        return aio_pika.Message(rng.randbytes(3000), content_type=PICKLE, **common), True
    # nonsense headers around a body the server can decode
    headers = {"atasks-deadline": "soon", "atasks-parent": 7, "atasks-deliveries": "x"}
    return aio_pika.Message(good, content_type=PICKLE, headers=headers, **common), True


@pytest.fixture
async def server(amqp_url: str, tmp_path: Path) -> AsyncIterator[int]:
    servers = Servers(amqp_url, tmp_path)
    process = servers.start("--max-message-size", "2000")
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    yield process.pid
    alive = process.poll() is None
    servers.stop_all()
    await delete_queues(amqp_url, workload)
    print(servers.log(0)[-5000:])
    assert alive, "the server died"


async def test_fuzzed_queue_leaves_the_server_serving(server: int, amqp_url: str) -> None:
    rng = random.Random(1234)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        answered: list[aio_pika.abc.AbstractIncomingMessage] = []
        await replies.consume(answered.append, no_ack=True)
        queue = f"atasks.default.{workload.pid.name}"
        expected = 0
        baseline = 0
        for n in range(4000):
            message, answerable = malformed(rng, replies.name, n)
            expected += answerable
            await channel.default_exchange.publish(message, routing_key=queue)
            if n == 999:  # the baseline, once the first thousand are answered
                async with asyncio.timeout(60):
                    while len(replies_in(answered)) < expected:
                        await asyncio.sleep(0.05)
                baseline = rss_kib(server)
        async with asyncio.timeout(60):
            while len(replies_in(answered)) < expected:
                await asyncio.sleep(0.05)
        statuses = {"ok" if r.ok else "error" for r in replies_in(answered)}
        errors = {r.error_type for r in replies_in(answered)}
        state = await channel.declare_queue(queue, passive=True)
        assert state.declaration_result.message_count == 0  # nothing requeued in a loop

    assert len(replies_in(answered)) == expected
    assert "error" in statuses
    assert {
        "atasks.errors.DecodeError",
        "atasks.errors.NoCodecRegistered",
        "atasks.errors.TransportError",
    } <= errors
    assert await workload.pid() == server  # still serving valid calls
    growth = rss_kib(server) - baseline
    assert growth < 20_000, f"server memory grew by {growth} KiB over 3000 bad messages"


def replies_in(messages: list[aio_pika.abc.AbstractIncomingMessage]) -> list[Reply]:
    """The replies that ``messages`` carry: one each, or several (replies ready together)."""
    found: list[Reply] = []
    for message in messages:
        if message.type == wire.REPLIES:
            found += wire.replies_from(message.body)
        else:
            error_type = str(message.headers.get(wire.H_ERROR_TYPE, ""))
            ok = message.type == wire.OK
            found.append(Reply(call_id="", ok=ok, content_type="", body=b"", error_type=error_type))
    return found


@atasks.atask(name="raw-peer", namespace="raw")
async def raw_peer(x: int) -> int:
    return x


async def test_an_undecodable_reply_fails_only_its_call(amqp_url: str) -> None:
    """A hand-written peer answers the first call with garbage, sends a reply for no call,
    then answers the second call properly."""
    # The peer reads one call a message: the calls are not coalesced.
    await atasks.setup("amqp", url=amqp_url, namespace="raw", coalesce=1)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue("atasks.raw.raw-peer", auto_delete=True)
        requests: asyncio.Queue[aio_pika.abc.AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(requests.put, no_ack=True)

        first = asyncio.ensure_future(raw_peer(1))
        second = asyncio.ensure_future(raw_peer(2))
        one, two = await requests.get(), await requests.get()
        assert one.reply_to is not None
        assert two.reply_to is not None

        async def reply(to: aio_pika.abc.AbstractIncomingMessage, body: bytes, cid: str) -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(body, content_type=PICKLE, correlation_id=cid, type="ok"),
                routing_key=str(to.reply_to),
            )

        await reply(one, b"\x80\x05not a pickle", str(one.correlation_id))
        with pytest.raises(DecodeError):
            await asyncio.wait_for(first, 5)
        await reply(two, CODEC.dumps("for nobody"), "no-such-call")
        await reply(two, CODEC.dumps(2), str(two.correlation_id))
        assert await asyncio.wait_for(second, 5) == 2


@atasks.atask(name="refused", namespace="full")
async def refused() -> None: ...


async def test_a_request_the_broker_refuses_is_an_error_at_the_caller(
    rabbit: RabbitNode, amqp_url: str
) -> None:
    """A length limit makes the broker nack publishes to a full queue (a quorum queue takes one
    message past its limit before it refuses)."""
    await asyncio.to_thread(
        rabbit.ctl,
        "set_policy",
        "atasks-test-full",
        r"^atasks\.full\.",
        '{"max-length": 1}',
        "--apply-to",
        "queues",
    )
    try:
        router = await atasks.setup("amqp", url=amqp_url, namespace="full", serve=True)
        await router.deactivate()  # the queue stays, with nobody taking from it
        queued = []
        for count in (1, 2):  # one at a time: the limit is checked as each one arrives
            queued.append(asyncio.ensure_future(refused()))
            await wait_for_queue_length(amqp_url, "atasks.full.refused", count)
        with pytest.raises(TransportError, match="refused"):
            await asyncio.wait_for(refused(), 10)
        for call in queued:
            call.cancel()
    finally:
        await asyncio.to_thread(rabbit.ctl, "clear_policy", "atasks-test-full")


async def wait_for_queue_length(url: str, queue: str, length: int) -> None:
    connection = await aio_pika.connect(url)
    async with connection, asyncio.timeout(10):
        channel = await connection.channel()
        while (
            await channel.declare_queue(queue, passive=True)
        ).declaration_result.message_count < length:
            await asyncio.sleep(0.02)
