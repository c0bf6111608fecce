"""Watch servers on a broker: ask them for their statistics, or stream their events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import aio_pika
from aio_pika.abc import AbstractConnection

from atasks.events import Event, decode_batch
from atasks.transport.backends.amqp.topology import DIRECT_REPLY_TO, Topology

Answers = list[dict[str, Any]]


async def inspect_servers(url: str, namespace: str, wait: float = 1.0) -> Answers:
    """Every server of ``namespace`` that answers within ``wait`` seconds, sorted by host and
    pid. A server that does not answer in time is simply absent."""
    async with await connect(url, wait + 5) as connection:
        return await ask_servers(connection, namespace, wait)


async def inspect_with_queues(url: str, namespace: str, wait: float = 1.0) -> Answers:
    """``inspect_servers``, each answer with the request queues of the atasks it serves:
    ``queues`` maps an atask's name to its queue, ready messages and consumers (``None``
    where the queue is gone)."""
    async with await connect(url, wait + 5) as connection:
        return await inspect_on(connection, namespace, wait)


async def inspect_on(connection: AbstractConnection, namespace: str, wait: float) -> Answers:
    """``inspect_with_queues`` on a connection the caller keeps (the dashboard's)."""
    servers = await ask_servers(connection, namespace, wait)
    names = sorted({str(name) for s in servers for name in s.get("atasks") or ()})
    queues = await queue_depths(connection, Topology(namespace), names)
    for server in servers:
        server["queues"] = {name: queues[str(name)] for name in server.get("atasks") or ()}
    return servers


async def ping_servers(
    url: str, namespace: str, within: float, *, host: str | None = None
) -> Answers:
    """The servers of ``namespace`` (on ``host`` only, if given) that answered by the time the
    first one did; empty if none did within ``within`` seconds."""

    def ours(answer: dict[str, Any]) -> bool:
        return host is None or answer.get("host") == host

    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    async with await connect(url, within) as connection:
        left = max(deadline - loop.time(), 0.0)
        found = await ask_servers(
            connection, namespace, left, enough=lambda found: any(map(ours, found))
        )
    return [answer for answer in found if ours(answer)]


async def queue_depths(
    connection: AbstractConnection, topology: Topology, names: list[str]
) -> dict[str, dict[str, Any] | None]:
    """The request queue of each atask of ``names``: its name, messages ready (waiting for a
    server; one message may carry several calls, see coalescing) and consumers, by a passive
    declare; ``None`` for a queue that does not exist."""
    return await depths_of(connection, {name: topology.request_queue(name) for name in names})


async def depths_of(
    connection: AbstractConnection, queues: Mapping[str, str]
) -> dict[str, dict[str, Any] | None]:
    """For each key of ``queues``, its queue's name, messages ready and consumers, by a passive
    declare; ``None`` for a queue that does not exist."""
    found: dict[str, dict[str, Any] | None] = {}
    channel = await connection.channel(publisher_confirms=False)
    try:
        for name, queue in queues.items():
            try:
                declared = await channel.declare_queue(queue, passive=True)
            except aio_pika.exceptions.ChannelClosed:  # not found: the broker closed the channel
                found[name] = None
                channel = await connection.channel(publisher_confirms=False)
                continue
            result = declared.declaration_result
            found[name] = {
                "queue": queue,
                "messages": result.message_count,
                "consumers": result.consumer_count,
            }
    finally:
        if not channel.is_closed:
            await channel.close()
    return found


async def connect(url: str, within: float) -> AbstractConnection:
    """A connection to the first node of ``url`` (comma-separated nodes) that takes one."""
    *others, last = [part.strip() for part in url.split(",") if part.strip()] or [url]
    for each in others:
        with contextlib.suppress(Exception):
            return await aio_pika.connect(each, timeout=within)
    return await aio_pika.connect(last, timeout=within)


async def ask_servers(
    connection: AbstractConnection,
    namespace: str,
    wait: float,
    *,
    enough: Callable[[Answers], bool] | None = None,
) -> Answers:
    """Ask the namespace's servers on its control exchange, and collect their answers for
    ``wait`` seconds, or until ``enough(answers)``."""
    # No publisher confirms: the question is best effort, and a server that just died can
    # get it nacked (its exclusive queue going away), which must not fail the whole inspect.
    channel = await connection.channel(publisher_confirms=False)
    answers: Answers = []
    arrived = asyncio.Event()
    token = uuid.uuid4().hex

    async def on_answer(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        if message.correlation_id != token:
            return
        try:
            answer = json.loads(message.body)
        except ValueError:
            return
        if isinstance(answer, dict):
            answers.append(answer)
            arrived.set()

    replies = await channel.get_queue(DIRECT_REPLY_TO, ensure=False)
    await replies.consume(on_answer, no_ack=True)
    try:
        exchange = await channel.get_exchange(Topology(namespace).control_exchange, ensure=True)
    except aio_pika.exceptions.ChannelClosed:
        return []  # no server of this namespace ever ran here
    await exchange.publish(
        aio_pika.Message(b"", type="inspect", correlation_id=token, reply_to=DIRECT_REPLY_TO),
        routing_key="",
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(wait):
            while enough is None or not enough(answers):
                await arrived.wait()
                arrived.clear()
    return sorted(answers, key=lambda a: (str(a.get("host")), int(a.get("pid", 0))))


async def stream_events(url: str, namespace: str) -> AsyncIterator[Event]:
    """The lifecycle events of ``namespace``, live, until the caller stops iterating."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            Topology(namespace).events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange, routing_key="#")
        async with queue.iterator(no_ack=True) as messages:
            async for message in messages:
                try:
                    events = decode_batch(message.body)
                except (ValueError, TypeError):
                    continue
                for event in events:
                    yield event
