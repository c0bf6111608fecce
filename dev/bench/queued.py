"""The fire-and-forget phase of the benchmark: confirmed publishes per second of
``@atask_queue`` (``await echo_queued(x)``) against a hand-written aio-pika publisher.

Both publish ``sizes.calls`` requests with ``sizes.inflight`` in flight, each awaited until the
broker confirmed it, to a durable quorum queue (atasks: its request queue, declared by the
client; the baseline: ``QUEUE``, declared as atasks declares a request queue but without
dead-lettering). Nobody consumes them: this measures the publish side alone. The sides take
turns, ``sizes.rounds`` rounds; both queues are deleted at the end.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aio_pika
import echo

from atasks.transport.backends.amqp import AMQPTransport

QUEUE = "bench.baseline-queued"
CONNECT_TIMEOUT = 10.0


async def measure(
    url: str,
    transport: AMQPTransport,
    calls: int,
    inflight: int,
    rounds: int,
    tick: Callable[[], None],
) -> dict[str, Any]:
    """Publishes per second of each side, and atasks / baseline."""
    connection = await aio_pika.connect(url, timeout=CONNECT_TIMEOUT)
    async with connection:
        channel = await connection.channel(publisher_confirms=True, on_return_raises=True)
        await channel.declare_queue(QUEUE, durable=True, arguments={"x-queue-type": "quorum"})
        body = echo.PAYLOAD_BYTES

        async def baseline_publish() -> None:
            await channel.default_exchange.publish(
                aio_pika.Message(body, correlation_id="b"), routing_key=QUEUE, mandatory=True
            )

        async def atasks_publish() -> None:
            await echo.echo_queued(echo.PAYLOAD)

        sides: dict[str, Callable[[], Awaitable[None]]] = {
            "baseline": baseline_publish,
            "atasks": atasks_publish,
        }
        for publish in sides.values():  # warm up: connections, declarations
            await _flood(publish, inflight * 4, inflight, lambda: None)
        spent = dict.fromkeys(sides, 0.0)
        done = dict.fromkeys(sides, 0)
        per_round = [calls // rounds + (i < calls % rounds) for i in range(rounds)]
        for chunk in per_round:
            for label, publish in sides.items():
                started = time.perf_counter()
                await _flood(publish, chunk, inflight, tick)
                spent[label] += time.perf_counter() - started
                done[label] += chunk
        await channel.queue_delete(QUEUE)
        await channel.queue_delete(transport.queue_name(echo.QUEUED_NAME))
    rate = {label: round(done[label] / spent[label], 1) for label in sides}
    return {
        "calls": calls,
        "inflight": inflight,
        "atasks_publishes_per_s": rate["atasks"],
        "baseline_publishes_per_s": rate["baseline"],
        "ratio": round(rate["atasks"] / rate["baseline"], 2) if rate["baseline"] else None,
    }


async def _flood(
    publish: Callable[[], Awaitable[None]], total: int, inflight: int, tick: Callable[[], None]
) -> None:
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            await publish()
            tick()

    await asyncio.gather(*(worker() for _ in range(inflight)))
