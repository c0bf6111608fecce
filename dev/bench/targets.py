"""The performance targets of one call at a time, in one run (docs/guides/performance.md).

```bash
.venv/bin/python dev/bench/targets.py --broker 4 --json    # about two minutes on 2 cores
.venv/bin/python dev/bench/targets.py --quick              # tiny counts: a smoke test
```

Three sides served at once and taking turns in every phase: atasks (its default settings, or
``--replies durable``), the hand-written baseline (``baseline.py``) and aio-pika's own
``patterns.RPC`` (``patterns.py``). Measured: sequential latency p50; calls per second with 1
and with 64 calls in flight; client + server CPU per call of atasks with 512 in flight; and the
loopback transport's overhead per call. Every ratio is atasks / a baseline, from this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any

import aio_pika
import baseline
import bench
import patterns
import rabbitmq4
import scaling
from bench import Bench, Progress, Servers, Sizes, Target

import atasks
from atasks.testing.rabbitnode import RabbitNode


@dataclass(frozen=True)
class TargetSizes:
    """How many calls each phase makes, per side."""

    sequential: int = 2_000
    warmup: int = 200
    one: int = 2_000  # 1 in flight
    many: int = 20_000  # 64 in flight
    heavy: int = 20_000  # 512 in flight, atasks alone
    loopback: int = 20_000
    rounds: int = 5


QUICK = TargetSizes(sequential=40, warmup=10, one=40, many=600, heavy=1_100, loopback=500, rounds=2)


async def _patterns_ready(bench_: Bench, client: patterns.PatternsClient) -> None:
    """Wait until the patterns server consumes, then until it answers."""
    connection = await aio_pika.connect(bench_.url, timeout=10)
    async with connection:
        channel = await connection.channel()
        while True:
            try:
                declared = await channel.declare_queue(patterns.QUEUE, passive=True)
            except aio_pika.exceptions.ChannelClosed:
                channel = await connection.channel()
                await asyncio.sleep(0.1)
                continue
            result = declared.declaration_result
            if result is not None and result.consumer_count >= 1:
                break
            await asyncio.sleep(0.1)
    assert await client.call(bench.PAYLOAD) == bench.PAYLOAD


def _ratios(results: dict[str, dict[str, Any]], key: str, theirs: str) -> float | None:
    return bench._ratio(results["atasks"][key], results[theirs][key])


async def measure(bench_: Bench, sizes: TargetSizes, replies: str) -> dict[str, Any]:
    """Every phase, the three sides taking turns."""
    base = baseline.BaselineClient(bench_.url)
    rpc = patterns.PatternsClient(bench_.url)
    servers = bench_.servers
    base_server = servers.start("baseline", bench.baseline_argv(bench_.url, bench_.queue_type))
    rpc_server = servers.start(
        "patterns",
        [sys.executable, "dev/bench/patterns.py", "--url", bench_.url, "--queue-type",
         bench_.queue_type],
    )  # fmt: skip
    results: dict[str, Any] = {}
    async with asyncio.timeout(bench.READY_TIMEOUT):
        await atasks.setup("amqp", url=bench_.url, replies=replies)
        await base.connect()
        await rpc.connect()
        await bench.wait_ready(base.call, baseline.QUEUE, 1, bench_.url, servers)
        await _patterns_ready(bench_, rpc)
    try:
        targets = [
            Target("baseline", base.call, base_server.pid, bench_.broker),
            Target("patterns", rpc.call, rpc_server.pid, bench_.broker),
            await bench_.atasks_server("atasks"),
        ]
        seq_sizes = Sizes(sequential=sizes.sequential, warmup=sizes.warmup, rounds=sizes.rounds)
        seq = await bench.sequential(targets, seq_sizes, servers, bench_.progress)
        one = await scaling.turns(bench_, targets, 1, sizes.one, sizes.rounds)
        many = await scaling.turns(bench_, targets, 64, sizes.many, sizes.rounds)
        heavy = await scaling.turns(bench_, targets[2:], 512, sizes.heavy, sizes.rounds)
        for theirs in ("baseline", "patterns"):
            results[theirs] = {
                "p50": _ratios(seq, "p50_us", theirs),
                "one_in_flight": _ratios(one, "calls_per_s", theirs),
                "64_in_flight": _ratios(many, "calls_per_s", theirs),
            }
        ours = heavy["atasks"]
        results["cpu_us_per_call_512"] = round(
            ours["client_cpu_us_per_call"] + ours["server_cpu_us_per_call"], 1
        )
        results["raw"] = {"sequential": seq, "one": one, "many": many, "heavy": heavy}
    finally:
        async with asyncio.timeout(bench.CLOSE_TIMEOUT):
            await atasks.close(grace=1)
            await base.close()
            await rpc.close()
        servers.stop_all()
    loop_sizes = Sizes(loopback=sizes.loopback, rounds=sizes.rounds)
    loop = await bench.loopback_overhead(loop_sizes, bench_.progress)
    results["loopback_us_per_call"] = loop["overhead_us_per_call"]
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--broker", choices=["3", "4"], default="3")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    parser.add_argument("--replies", choices=["direct", "durable"], default="direct")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else TargetSizes()
    root = rabbitmq4.find() if args.broker == "4" else None
    if args.broker == "4" and root is None:
        parser.error("no RabbitMQ 4.x root: build it with `python3 dev/rabbitmq4.py` (as root)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    bench.clean_environment()
    with bench.workspace() as work:
        servers = Servers(work)
        node = RabbitNode(work / "rabbit", root=root)
        try:
            node.start()
            progress = Progress(7)
            bench_ = Bench(
                node.url, bench.broker_pid(node), Sizes(), servers, progress, args.queue_type
            )
            started, other = time.monotonic(), bench.OtherLoad()
            results = asyncio.run(measure(bench_, sizes, args.replies))
            results["environment"] = {
                **bench.environment(node, args.queue_type, args.replies),
                "other_processes_cpu_percent": other.percent(),
                "elapsed_s": round(time.monotonic() - started, 1),
            }
        finally:
            servers.stop_all()
            node.close()
    if args.json:
        print(json.dumps(results, allow_nan=False))
    else:
        env = results["environment"]
        print(
            f"RabbitMQ {env['rabbitmq']}, replies {env['replies']}, other processes "
            f"{env['other_processes_cpu_percent']}% CPU"
        )
        for theirs in ("baseline", "patterns"):
            r = results[theirs]
            print(
                f"vs {theirs}: p50 {r['p50']}x, 1 in flight {r['one_in_flight']}x, "
                f"64 in flight {r['64_in_flight']}x"
            )
        print(f"client + server CPU per call, 512 in flight: {results['cpu_us_per_call_512']} µs")
        print(f"loopback overhead per call: {results['loopback_us_per_call']} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
