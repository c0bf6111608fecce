"""What a fleet-wide limit or rate costs a call: ``@atask(limit=...)`` and ``@atask(rate=...)``
against the same atask unlimited, in rounds that take turns in the same run.

    .venv/bin/python dev/bench/limits.py [--calls N] [--root RABBITMQ4_ROOT]

Over loopback (an asyncio semaphore) and over a private RabbitMQ node (a token taken from, and
given back to, a quorum queue), serving in this process: sequential latency p50 of ``await
echo(x)`` and calls per second with 16 in flight. The limit and the rate are set high enough
never to make a call wait, so what is measured is the cost of the tokens alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dev/, for rabbitnode

from rabbitnode import RabbitNode

import atasks


@atasks.atask
async def plain(x: int) -> int:
    return x


@atasks.atask(limit=1000)
async def limited(x: int) -> int:
    return x


@atasks.atask(rate="10000/s")
async def paced(x: int) -> int:
    return x


SIDES: dict[str, Callable[[int], Awaitable[int]]] = {
    "unlimited": plain,
    "limit": limited,
    "rate": paced,
}


async def sequential(call: Callable[[int], Awaitable[int]], calls: int) -> list[float]:
    took = []
    for i in range(calls):
        began = time.perf_counter()
        await call(i)
        took.append(time.perf_counter() - began)
    return took


async def parallel(call: Callable[[int], Awaitable[int]], calls: int, inflight: int) -> float:
    """Calls per second with ``inflight`` calls in flight."""
    began = time.perf_counter()
    for start in range(0, calls, inflight):
        await asyncio.gather(*(call(i) for i in range(start, min(start + inflight, calls))))
    return calls / (time.perf_counter() - began)


async def measure(kind: str, url: str | None, calls: int, rounds: int) -> dict[str, Any]:
    await atasks.setup(kind, url=url, serve=True, concurrency=64)
    try:
        for call in SIDES.values():  # warm up: connections, declarations, token pools
            await parallel(call, 64, 16)
        latencies: dict[str, list[float]] = {side: [] for side in SIDES}
        rates: dict[str, list[float]] = {side: [] for side in SIDES}
        for _ in range(rounds):
            for side, call in SIDES.items():
                latencies[side] += await sequential(call, calls // rounds)
                rates[side].append(await parallel(call, calls // rounds, 16))
    finally:
        await atasks.close()
    p50 = {side: statistics.median(took) * 1e6 for side, took in latencies.items()}
    per_second = {side: statistics.median(found) for side, found in rates.items()}
    return {
        "p50_us": p50,
        "calls_per_s": per_second,
        "p50_ratio": {side: p50[side] / p50["unlimited"] for side in SIDES},
        "throughput_ratio": {side: per_second[side] / per_second["unlimited"] for side in SIDES},
    }


def report(kind: str, found: dict[str, Any]) -> None:
    print(f"\n{kind}:  side        p50 µs   x unlimited   calls/s (16 in flight)   x unlimited")
    for side in SIDES:
        print(
            f"{'':>{len(kind) + 2}}{side:<10} {found['p50_us'][side]:>8.0f} "
            f"{found['p50_ratio'][side]:>12.2f} {found['calls_per_s'][side]:>15.0f} "
            f"{found['throughput_ratio'][side]:>21.2f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000, help="calls per side and transport")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--root", help="a RabbitMQ 4.x root (dev/rabbitmq4.py); default: 3.x")
    options = parser.parse_args()
    report("loopback", asyncio.run(measure("loopback", None, options.calls, options.rounds)))
    with RabbitNode(root=options.root) as node:
        node.start()
        print(f"\nRabbitMQ {node.version}", file=sys.stderr)
        report("amqp", asyncio.run(measure("amqp", node.url, options.calls, options.rounds)))


if __name__ == "__main__":
    main()
