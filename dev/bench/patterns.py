"""A second, independent baseline: aio-pika's own ``aio_pika.patterns.RPC``, as its users write
it.

Server (``python dev/bench/patterns.py --url URL``): registers ``echo`` on the queue ``QUEUE``,
durable and of the queue type atasks' request queues have (``--queue-type``, quorum by default).
Client (``PatternsClient``): ``RPC.create`` on a channel with publisher confirms (aio-pika's
default), its reply queue exclusive (RabbitMQ 4.3 refuses transient queues that are not);
``RPC.call`` publishes each call mandatory, pickled, and waits for its reply. Nothing survives a
lost connection.
"""

from __future__ import annotations

import asyncio

import aio_pika
from aio_pika.abc import AbstractConnection
from aio_pika.patterns import RPC
from servermain import serve_main

QUEUE = "bench.patterns"
PREFETCH = 64
CONNECT_TIMEOUT = 10.0


async def echo(*, value: str) -> str:
    return value


async def serve(url: str, stop: asyncio.Event, queue_type: str = "quorum") -> None:
    """Answer every call of ``QUEUE`` with its value until ``stop`` is set."""
    connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        rpc = await RPC.create(channel, exclusive=True)
        await rpc.register(QUEUE, echo, durable=True, arguments={"x-queue-type": queue_type})
        await stop.wait()


class PatternsClient:
    """Calls the patterns server: ``await client.call(value)`` returns ``value`` from it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: AbstractConnection | None = None
        self._rpc: RPC | None = None

    async def connect(self) -> None:
        self._connection = await aio_pika.connect(self.url, timeout=CONNECT_TIMEOUT)
        channel = await self._connection.channel()
        self._rpc = await RPC.create(channel, exclusive=True)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await connection.close()

    async def call(self, value: str) -> str:
        assert self._rpc is not None
        result: str = await self._rpc.call(QUEUE, kwargs={"value": value})
        return result


def main() -> None:
    """CLI: serve until SIGINT or SIGTERM."""
    serve_main(serve, __doc__.splitlines()[0])


if __name__ == "__main__":
    main()
