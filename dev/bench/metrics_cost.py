"""The cost of ``atasks.metrics.Metrics`` on throughput: echo calls over loopback (the worst
case: no broker to hide it behind), with and without the middleware, in alternating rounds of
the same run. Prints calls per second of each and their ratio.

    .venv/bin/python dev/bench/metrics_cost.py [--calls 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import atasks
from atasks import atask
from atasks.metrics import Metrics


@atask(namespace="plain")
async def echo_plain(text: str) -> str:
    return text


@atask(namespace="chained")
async def echo_chained(text: str) -> str:
    return text


class PassThrough(atasks.Middleware):
    """A serve-side middleware that does nothing: the cost of having a chain at all."""

    async def serve(self, call: atasks.Call, proceed: atasks.Proceed) -> object:
        return await proceed(call)


@atask(namespace="metered")
async def echo_metered(text: str) -> str:
    return text


async def rate(fn: atasks.ATask[[str], str], calls: int, width: int = 64) -> float:
    """Calls per second, ``width`` calls in flight at a time."""
    started = time.perf_counter()
    for _ in range(calls // width):
        await asyncio.gather(*(fn("x" * 100) for _ in range(width)))
    return (calls // width) * width / (time.perf_counter() - started)


async def main(calls: int, rounds: int) -> None:
    await atasks.setup(namespace="plain", serve=True)
    await atasks.setup(namespace="chained", serve=True, middleware=[PassThrough()])
    await atasks.setup(namespace="metered", serve=True, middleware=[Metrics()])
    await rate(echo_plain, calls // 4)  # warm-up
    await rate(echo_metered, calls // 4)
    plain, chained, metered = [], [], []
    for _ in range(rounds):
        plain.append(await rate(echo_plain, calls))
        chained.append(await rate(echo_chained, calls))
        metered.append(await rate(echo_metered, calls))
    await atasks.close()
    p, m = statistics.median(plain), statistics.median(metered)
    c = statistics.median(chained)
    print(f"loopback, no metrics:   {p:10.0f} calls/s (median of {rounds})")
    print(f"loopback, a do-nothing middleware: {c:10.0f} calls/s (ratio {c / p:.3f})")
    print(f"loopback, with metrics: {m:10.0f} calls/s")
    print(f"ratio with/without: {m / p:.3f} (cost {100 * (1 - m / p):.1f}%)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    asyncio.run(main(args.calls, args.rounds))
