"""The cost of ``atasks.metrics.Metrics`` on throughput, with and without the middleware, in
alternating rounds of the same run; prints calls per second of each and their ratio.

- over loopback (the default): echo calls in this process, the worst case (no broker to hide
  the cost behind); a do-nothing middleware for scale;
- over AMQP (``--broker 3`` or ``--broker 4``, a private node as ``bench.py`` starts it): an
  ``atasks run dev/bench/echo.py`` server with ``--metrics-port`` against one without, 64 calls
  in flight. The two would share the request queue, so each round starts the server it
  measures (and stops it after); the order alternates. A scrape after each metered round
  checks that the calls were counted.

    .venv/bin/python dev/bench/metrics_cost.py [--calls 20000] [--rounds 5]
    .venv/bin/python dev/bench/metrics_cost.py --broker 3 [--calls 20000] [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import sys
import time
import urllib.request

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


INFLIGHT = 64


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _counted(port: int) -> float:
    """The echo calls the metered server counted, from its ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    key = 'atasks_calls_total{atask="bench.echo",outcome="succeeded"}'
    return sum(float(line.rpartition(" ")[2]) for line in text.splitlines() if line.startswith(key))


async def over_amqp(url: str, broker: int | None, calls: int, rounds: int, work: object) -> None:
    import bench
    import echo

    servers = bench.Servers(work)  # type: ignore[arg-type]
    await atasks.setup("amqp", url=url)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu: dict[str, list[float]] = {"off": [], "on": []}  # the server's, µs per call
    try:
        for index in range(rounds):
            for side in ("off", "on") if index % 2 == 0 else ("on", "off"):
                port = _free_port()
                extra = ("--metrics-port", str(port)) if side == "on" else ()
                argv = bench.atasks_argv(*extra, url=url, queue_type="quorum")
                server = servers.start(side, argv)
                queue = f"atasks.default.{echo.NAME}"
                await bench.wait_ready(echo.echo, queue, 1, url, servers)
                target = bench.Target(side, echo.echo, server.pid, broker)
                budget = bench._budget(calls, 0.01)
                warm = bench.flood(target, INFLIGHT, INFLIGHT * 8, lambda: None)
                await bench.guarded(warm, "warm-up", budget, servers)
                meter = target.meter()
                timed = bench.flood(target, INFLIGHT, calls, lambda: None)
                await bench.guarded(timed, f"metrics {side}", budget, servers)
                used = meter.stop(calls)
                rates[side].append(calls / used.wall)
                cpu[side].append(used.server / calls * 1e6)
                if side == "on" and (counted := _counted(port)) < calls:
                    raise bench.BenchError(f"the metered server counted {counted} calls")
                servers.stop(side)
                print(
                    f"round {index + 1} metrics {side}: {rates[side][-1]:.0f} calls/s, "
                    f"server CPU {cpu[side][-1]:.0f} µs/call",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        servers.stop_all()
        await atasks.close()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    paired = [b / a for a, b in zip(rates["off"], rates["on"], strict=True)]
    print(f"amqp, no metrics:   {off:10.0f} calls/s (median of {rounds})")
    print(f"amqp, with metrics: {on:10.0f} calls/s")
    print(
        f"ratio with/without: {on / off:.3f} (cost {100 * (1 - on / off):.1f}%); "
        f"round by round {min(paired):.3f} to {max(paired):.3f}"
    )
    c_off, c_on = statistics.median(cpu["off"]), statistics.median(cpu["on"])
    print(
        f"server CPU per call: {c_off:.0f} µs without, {c_on:.0f} µs with metrics "
        f"(ratio {c_on / c_off:.3f})"
    )


def amqp_main(broker: str, calls: int, rounds: int) -> None:
    import bench
    import rabbitmq4

    from atasks.testing.rabbitnode import RabbitNode

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    for key in [key for key in os.environ if key.startswith("ATASKS_")]:
        del os.environ[key]
    os.environ["ATASKS_INSECURE_PICKLE"] = "1"  # as bench.py: pickle, unsigned
    root = rabbitmq4.find() if broker == "4" else None
    if broker == "4" and root is None:
        sys.exit("no RabbitMQ 4.x root: build it with `python3 dev/rabbitmq4.py` (as root)")
    with bench.workspace() as work:
        node = RabbitNode(work / "rabbit", root=root)
        try:
            node.start()
            print(f"RabbitMQ {node.version}", flush=True)
            asyncio.run(over_amqp(node.url, bench.broker_pid(node), calls, rounds, work))
        finally:
            node.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=None, help="5 over loopback, 6 over AMQP")
    parser.add_argument("--broker", choices=["3", "4"], help="over AMQP, on this RabbitMQ")
    args = parser.parse_args()
    if args.broker:
        amqp_main(args.broker, args.calls, args.rounds or 6)
    else:
        asyncio.run(main(args.calls, args.rounds or 5))
