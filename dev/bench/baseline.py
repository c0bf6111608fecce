"""The baseline atasks is measured against: a minimal RPC written directly on aio-pika.

Server (``python dev/bench/baseline.py --url URL``): consumes the request queue ``QUEUE`` —
durable, of the queue type atasks' request queues have (``--queue-type``, quorum by default),
with transient messages — at a prefetch of 64 (atasks'
default concurrency), publishes the body back to ``reply_to`` with the request's
``correlation_id``, then acks the request. Replies are not confirmed.

Client (``BaselineClient``): one channel with publisher confirms on the request publish (the
transport of atasks confirms its requests and also its replies, and acks a request only after
its reply is confirmed); one exclusive, auto-delete, server-named reply queue consumed without
acks; a dict of correlation id → future. Nothing more: no codec (the payload is a str sent as
UTF-8), no deadlines, no cancellation, no reconnection.
"""

from __future__ import annotations

import asyncio
import uuid

import aio_pika
from aio_pika.abc import (
    AbstractChannel,
    AbstractConnection,
    AbstractIncomingMessage,
    AbstractQueue,
)
from servermain import serve_main

QUEUE = "bench.baseline"
PREFETCH = 64
CONNECT_TIMEOUT = 10.0


async def serve(url: str, stop: asyncio.Event, queue_type: str = "quorum") -> None:
    """Answer every request on ``QUEUE`` with its own body until ``stop`` is set."""
    connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=False)
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(
            QUEUE, durable=True, arguments={"x-queue-type": queue_type}
        )
        exchange = channel.default_exchange

        async def on_request(message: AbstractIncomingMessage) -> None:
            reply = aio_pika.Message(message.body, correlation_id=message.correlation_id)
            await exchange.publish(reply, routing_key=message.reply_to or "")
            await message.ack()

        await queue.consume(on_request)
        await stop.wait()


class BaselineClient:
    """Calls the baseline server: ``await client.call(value)`` returns ``value`` from it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._replies: AbstractQueue | None = None
        self._pending: dict[str, asyncio.Future[bytes]] = {}

    async def connect(self) -> None:
        """Open the connection, the confirming channel and the reply queue."""
        self._connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT)
        # on_return_raises: a request no queue takes fails at once (used to wait for a server)
        self._channel = await self._connection.channel(
            publisher_confirms=True, on_return_raises=True
        )
        self._replies = await self._channel.declare_queue(exclusive=True, auto_delete=True)
        await self._replies.consume(self._on_reply, no_ack=True)

    async def close(self) -> None:
        """Close the connection; calls still waiting fail."""
        connection, self._connection = self._connection, None
        for future in self._pending.values():
            if not future.done():
                future.set_exception(ConnectionError("client closed"))
        self._pending.clear()
        if connection is not None:
            await connection.close()

    async def call(self, value: str) -> str:
        """Send ``value`` to a server and return its reply."""
        assert self._channel is not None
        assert self._replies is not None
        correlation_id = uuid.uuid4().hex
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await self._channel.default_exchange.publish(
                aio_pika.Message(
                    value.encode(), correlation_id=correlation_id, reply_to=self._replies.name
                ),
                routing_key=QUEUE,
            )
            return (await future).decode()
        finally:
            self._pending.pop(correlation_id, None)

    async def _on_reply(self, message: AbstractIncomingMessage) -> None:
        future = self._pending.pop(message.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(message.body)


def main() -> None:
    """CLI: serve the baseline until SIGINT or SIGTERM."""
    serve_main(serve, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
