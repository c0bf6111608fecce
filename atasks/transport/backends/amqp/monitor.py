"""Watch servers on a broker: ask them for their statistics, or stream their events."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika

from atasks.events import Event, decode_batch
from atasks.transport.backends.amqp.topology import DIRECT_REPLY_TO, Topology


async def inspect_servers(url: str, namespace: str, wait: float = 1.0) -> list[dict[str, Any]]:
    """Every server of ``namespace`` that answers within ``wait`` seconds, sorted by host and
    pid. A server that does not answer in time is simply absent."""
    connection = await aio_pika.connect(url, timeout=wait + 5)
    async with connection:
        # No publisher confirms: the question is best effort, and a server that just died can
        # get it nacked (its exclusive queue going away), which must not fail the whole inspect.
        channel = await connection.channel(publisher_confirms=False)
        answers: list[dict[str, Any]] = []
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
        await asyncio.sleep(wait)
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
