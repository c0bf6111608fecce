"""The scaling phase of the benchmark (``dev/bench/bench.py --scaling``): atasks against the
hand-written aio-pika RPC (``baseline.py``) as load grows, in the same run, the sides taking
turns.

- calls per second and CPU per call (client + servers + broker) at 1, 8, 64, 512 and 4,096
  calls in flight, and their ratios;
- MB/s echoing payloads of 100 B, 10 KB, 1 MB and 16 MB (decimal: 16 MB fits RabbitMQ 4.x's
  16 MiB limit with room for the envelope), a few calls for the big ones;
- memory per call in flight: the growth of the client's and the servers' RSS while the most
  calls are in flight, divided by that count;
- ``atasks run --workers N`` against N baseline server processes, for N = 1, 2, 4;
- an atasks server on uvloop against one on asyncio's loop (the same client), when uvloop is
  installed; skipped with a note when it is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import sys
import tracemalloc
from dataclasses import asdict, dataclass, replace
from typing import Any

import baseline
import bench
from bench import Bench, Target, Usage, _budget, _chunks, _heartbeat, _ratio, flood, guarded

import atasks


@dataclass(frozen=True)
class ScalingSizes:
    """How much each part of the scaling phase does."""

    inflight: tuple[int, ...] = (1, 8, 64, 512, 4_096)
    calls: int = 10_000  # per side and level of calls in flight; at least twice the level
    payloads: tuple[int, ...] = (100, 10_000, 1_000_000, 16_000_000)  # bytes (1-byte chars)
    payload_bytes: int = 400_000_000  # per side and payload size, within [4, calls] calls
    payload_inflight: int = 8
    workers: tuple[int, ...] = (1, 2, 4)
    workers_calls: int = 10_000  # per side, 64 in flight
    rounds: int = 5


QUICK_SCALING = ScalingSizes(calls=200, payload_bytes=20_000_000, workers_calls=200, rounds=2)
WORKERS_INFLIGHT = 64
MEMORY_SAMPLE = 0.05  # seconds between RSS samples
PAGE = os.sysconf("SC_PAGE_SIZE")


# --- memory ------------------------------------------------------------------------------


def tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and its live descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with (
                contextlib.suppress(OSError, IndexError, ValueError),
                open(f"/proc/{entry}/stat") as f,
            ):
                parents[int(entry)] = int(f.read().rsplit(")", 1)[1].split()[1])
    total, todo, seen = 0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{pid}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
        todo += [child for child, parent in parents.items() if parent == pid]
    return total


@dataclass
class Peak:
    """How far memory grew over a stretch: the client's Python heap (``tracemalloc``: the
    client's process holds both sides' clients, so its RSS would mix them) and the RSS of a
    server's process tree, in bytes."""

    client: int = 0
    server: int = 0


async def _sample_server(servers: tuple[int, ...], peak: Peak, stop: asyncio.Event) -> None:
    start = sum(map(tree_rss, servers))
    while not stop.is_set():
        peak.server = max(peak.server, sum(map(tree_rss, servers)) - start)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), MEMORY_SAMPLE)


async def _flood_measuring_memory(target: Target, inflight: int) -> Peak:
    """``inflight`` calls at once, and how far memory grew while they were in flight."""
    peak, stop = Peak(), asyncio.Event()
    sampler = asyncio.create_task(_sample_server(_servers(target), peak, stop))
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        await flood(target, inflight, inflight, lambda: None)
        peak.client = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
        stop.set()
        await sampler
    return peak


# --- taking turns ------------------------------------------------------------------------


def _servers(target: Target) -> tuple[int, ...]:
    return (target.server,) if isinstance(target.server, int) else target.server


async def turns(
    bench_: Bench,
    targets: list[Target],
    inflight: int,
    calls: int,
    rounds: int,
    *,
    what: str = "",
    memory: bool = False,
) -> dict[str, dict[str, Any]]:
    """``calls`` calls per target, ``inflight`` at a time, the targets taking turns in
    ``rounds`` rounds after a warm-up of up to ``inflight`` calls each (``what``: the
    progress label); with ``memory``, how far the client's heap and the servers' RSS grew per
    call in flight during the warm-up too."""
    payload = len(targets[0].payload)
    peaks: dict[str, Peak] = {}

    async def run() -> dict[str, Usage]:
        for target in targets:  # the warm-up: memory is measured there, not metered
            if memory:
                peaks[target.label] = await _flood_measuring_memory(target, inflight)
            else:
                await flood(target, inflight, min(inflight, calls), lambda: None)
        labels = " / ".join(target.label for target in targets)
        bench_.progress.start(f"{labels}: {what or f'{inflight} in flight'}", calls * 2)
        usage = {target.label: Usage() for target in targets}
        for chunk in _chunks(calls, rounds):
            for target in targets:
                meter = target.meter()
                await flood(target, inflight, chunk, bench_.progress.tick)
                usage[target.label].add(meter.stop(chunk))
        return usage

    total = (calls + min(inflight, calls)) * len(targets)
    usage = await guarded(
        run(),
        f"{inflight} calls in flight of {payload:,} bytes",
        _budget(total, 0.01 + payload / 5e6),
        bench_.servers,
        _heartbeat(targets),
    )
    results: dict[str, dict[str, Any]] = {}
    for label, used in usage.items():
        per_call = used.per_call()
        cpu = sum(per_call[f"{side}_cpu_us_per_call"] for side in ("client", "server", "broker"))
        results[label] = {
            "calls": used.calls,
            "inflight": inflight,
            "payload_bytes": payload,
            "calls_per_s": round(used.calls / used.wall, 1),
            "mb_per_s": round(used.calls * payload / used.wall / 1e6, 2),
            **per_call,
            "total_cpu_us_per_call": round(cpu, 1),
        }
        if memory:
            results[label]["client_heap_kb_per_inflight"] = round(
                peaks[label].client / inflight / 1024, 2
            )
            results[label]["server_rss_growth_kb"] = round(peaks[label].server / 1024, 1)
            results[label]["server_rss_kb_per_inflight"] = round(
                peaks[label].server / inflight / 1024, 2
            )
    bench_.progress.finish(
        "; ".join(f"{label} {r['calls_per_s']:,.0f} calls/s" for label, r in results.items())
    )
    return results


def _versus(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ours, theirs = results["atasks"], results["baseline"]
    return {
        **results,
        "ratio_throughput": _ratio(ours["calls_per_s"], theirs["calls_per_s"]),
        "ratio_total_cpu_per_call": _ratio(
            ours["total_cpu_us_per_call"], theirs["total_cpu_us_per_call"]
        ),
    }


# --- the phase ---------------------------------------------------------------------------


def _with_payload(target: Target, size: int) -> Target:
    return replace(target, payload="x" * size)


async def _baselines(bench_: Bench, client: baseline.BaselineClient, count: int) -> Target:
    """``count`` baseline server processes, consuming."""
    started = [
        bench_.servers.start(f"baseline {i}", bench.baseline_argv(bench_.url, bench_.queue_type))
        for i in range(count)
    ]
    await bench.wait_ready(client.call, baseline.QUEUE, count, bench_.url, bench_.servers)
    pids = tuple(process.pid for process in started)
    return Target("baseline", client.call, pids[0] if count == 1 else pids, bench_.broker)


def uvloop_argv(url: str, queue_type: str) -> list[str]:
    """An atasks echo server whose event loop is uvloop's."""
    argv = bench.atasks_argv(url=url, queue_type=queue_type)
    boot = (
        "import sys, uvloop; uvloop.install(); from atasks.cli import main; "
        "sys.argv[0] = 'atasks'; main()"
    )
    return [sys.executable, "-c", boot, *argv[3:]]


async def measure_scaling(bench_: Bench, sizes: ScalingSizes) -> dict[str, Any]:
    """Every part of the scaling phase, in order (see the module's docstring)."""
    results: dict[str, Any] = {"scaling_sizes": asdict(sizes)}
    client = baseline.BaselineClient(bench_.url)
    async with asyncio.timeout(bench.READY_TIMEOUT):
        await client.connect()
    try:
        ours = await bench_.atasks_server("atasks")
        theirs = await _baselines(bench_, client, 1)
        results["inflight"] = {}
        for level in sizes.inflight:
            calls = max(sizes.calls, 2 * level)
            measured = await turns(
                bench_,
                [theirs, ours],
                level,
                calls,
                sizes.rounds,
                memory=level == max(sizes.inflight),
            )
            results["inflight"][str(level)] = _versus(measured)
        top = results["inflight"][str(max(sizes.inflight))]
        results["memory"] = {
            "inflight": max(sizes.inflight),
            **{
                side: {key: value for key, value in top[side].items() if "_kb" in key}
                for side in ("atasks", "baseline")
            },
        }
        results["payloads"] = {}
        for size in sizes.payloads:
            count = max(4, min(sizes.calls, sizes.payload_bytes // size))
            measured = await turns(
                bench_,
                [_with_payload(theirs, size), _with_payload(ours, size)],
                min(sizes.payload_inflight, count),
                count,
                min(sizes.rounds, count),
                what=f"{size:,} B",
            )
            results["payloads"][str(size)] = {
                **_versus(measured),
                "ratio_mb_per_s": _ratio(
                    measured["atasks"]["mb_per_s"], measured["baseline"]["mb_per_s"]
                ),
            }
        bench_.servers.stop_all()
        results["workers"] = {}
        for count in sizes.workers:
            ours = await bench_.atasks_server("atasks", ("--workers", str(count)), consumers=count)
            theirs = await _baselines(bench_, client, count)
            measured = await turns(
                bench_,
                [theirs, ours],
                WORKERS_INFLIGHT,
                sizes.workers_calls,
                sizes.rounds,
                what=f"{count} server process(es)",
            )
            results["workers"][str(count)] = _versus(measured)
            bench_.servers.stop_all()
    finally:
        try:
            async with asyncio.timeout(bench.CLOSE_TIMEOUT):
                await client.close()
        finally:
            bench_.servers.stop_all()
    results["uvloop"] = await uvloop_phase(bench_, sizes)
    return results


async def uvloop_phase(bench_: Bench, sizes: ScalingSizes) -> dict[str, Any]:
    """Throughput of an atasks server on uvloop against one on asyncio's loop, 64 in
    flight, one at a time (they would share the queue), restarted in each round."""
    if importlib.util.find_spec("uvloop") is None:
        note = "uvloop is not installed"
        bench_.progress.start("atasks server: uvloop / asyncio", 0)
        bench_.progress.finish(f"skipped: {note}")
        return {"skipped": True, "note": note}
    usage = {"asyncio": Usage(), "uvloop": Usage()}
    bench_.progress.start("atasks server: asyncio / uvloop", sizes.workers_calls * 2)
    for chunk in _chunks(sizes.workers_calls, sizes.rounds):
        for loop in usage:
            if loop == "asyncio":
                target = await bench_.atasks_server("atasks")
            else:
                process = bench_.servers.start(
                    "atasks uvloop", uvloop_argv(bench_.url, bench_.queue_type)
                )
                target = await bench_.atasks_ready(process, "atasks uvloop")
            try:
                meter = target.meter()
                await guarded(
                    flood(target, WORKERS_INFLIGHT, chunk, bench_.progress.tick),
                    f"atasks on {loop}",
                    _budget(chunk, 0.01),
                    bench_.servers,
                    _heartbeat([target]),
                )
                usage[loop].add(meter.stop(chunk))
            finally:
                bench_.servers.stop_all()
    result: dict[str, Any] = {"skipped": False, "inflight": WORKERS_INFLIGHT}
    for loop, used in usage.items():
        per_call = used.per_call()
        result[loop] = {
            "calls": used.calls,
            "calls_per_s": round(used.calls / used.wall, 1),
            **per_call,
        }
    result["ratio_throughput"] = _ratio(
        result["uvloop"]["calls_per_s"], result["asyncio"]["calls_per_s"]
    )
    result["ratio_server_cpu_per_call"] = _ratio(
        result["uvloop"]["server_cpu_us_per_call"], result["asyncio"]["server_cpu_us_per_call"]
    )
    bench_.progress.finish(
        f"asyncio {result['asyncio']['calls_per_s']:,.0f} calls/s, uvloop "
        f"{result['uvloop']['calls_per_s']:,.0f} calls/s"
    )
    return result


def phases(sizes: ScalingSizes) -> int:
    """How many progress phases the scaling phase shows."""
    return len(sizes.inflight) + len(sizes.payloads) + len(sizes.workers) + 1


async def run(bench_: Bench, sizes: ScalingSizes) -> dict[str, Any]:
    """The scaling phase with a transport set up for the client, then closed."""
    async with asyncio.timeout(bench.READY_TIMEOUT):
        await atasks.setup("amqp", url=bench_.url)
    try:
        return await measure_scaling(bench_, sizes)
    finally:
        async with asyncio.timeout(bench.CLOSE_TIMEOUT):
            await atasks.close(grace=1)


# --- output ------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """The scaling results as markdown tables."""
    env, scaling = results["environment"], results["scaling"]
    lines = [
        f"atasks {env['atasks']}, aio-pika {env['aio_pika']}, RabbitMQ {env['rabbitmq']} "
        f"({env['queue_type']} request queues), Python {env['python']}, {env['cpus']} CPUs "
        "shared by client, servers and broker; other processes used "
        f"{env['other_processes_cpu_percent']}% of the CPU during the run. Ratios: atasks / "
        "baseline, both measured in this run, taking turns.",
        "",
    ]
    if env["other_processes_cpu_percent"] > bench.OTHER_LOAD_WARNING:
        lines += ["**Other work was running on this machine: these numbers are skewed.**", ""]

    def cell(r: float | None) -> str:
        return "n/a" if r is None else f"{r:.2f}"

    lines += [
        "| in flight | atasks calls/s | baseline calls/s | ratio | atasks CPU/call (µs) "
        "| baseline CPU/call (µs) | ratio |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level, r in scaling["inflight"].items():
        a, b = r["atasks"], r["baseline"]
        lines.append(
            f"| {int(level):,} | {a['calls_per_s']:,.0f} | {b['calls_per_s']:,.0f} | "
            f"{cell(r['ratio_throughput'])} | {a['total_cpu_us_per_call']:,.0f} | "
            f"{b['total_cpu_us_per_call']:,.0f} | {cell(r['ratio_total_cpu_per_call'])} |"
        )
    lines += [
        "",
        "| payload | calls | atasks MB/s | baseline MB/s | ratio |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, r in scaling["payloads"].items():
        a, b = r["atasks"], r["baseline"]
        lines.append(
            f"| {int(size):,} B | {a['calls']:,} | {a['mb_per_s']:,.2f} | {b['mb_per_s']:,.2f} "
            f"| {cell(r['ratio_mb_per_s'])} |"
        )
    memory = scaling["memory"]
    lines += [
        "",
        f"| memory, {memory['inflight']:,} calls in flight | client heap per call (KB) "
        "| server RSS growth (KB) | server RSS per call (KB) |",
        "| --- | ---: | ---: | ---: |",
        *(
            f"| {side} | {memory[side]['client_heap_kb_per_inflight']:.2f} | "
            f"{memory[side]['server_rss_growth_kb']:,.0f} | "
            f"{memory[side]['server_rss_kb_per_inflight']:.2f} |"
            for side in ("atasks", "baseline")
        ),
        "",
        f"| server processes ({WORKERS_INFLIGHT} in flight) | atasks calls/s "
        "| baseline calls/s | ratio | atasks CPU/call (µs) | baseline CPU/call (µs) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, r in scaling["workers"].items():
        a, b = r["atasks"], r["baseline"]
        lines.append(
            f"| {count} | {a['calls_per_s']:,.0f} | {b['calls_per_s']:,.0f} | "
            f"{cell(r['ratio_throughput'])} | {a['total_cpu_us_per_call']:,.0f} | "
            f"{b['total_cpu_us_per_call']:,.0f} |"
        )
    uv = scaling["uvloop"]
    lines.append("")
    if uv["skipped"]:
        lines.append(f"uvloop: skipped ({uv['note']}).")
    else:
        lines.append(
            f"atasks server on uvloop, {uv['inflight']} in flight: "
            f"{uv['uvloop']['calls_per_s']:,.0f} calls/s against "
            f"{uv['asyncio']['calls_per_s']:,.0f} on asyncio's loop "
            f"({cell(uv['ratio_throughput'])} times); server CPU per call "
            f"{uv['uvloop']['server_cpu_us_per_call']:,.0f} µs against "
            f"{uv['asyncio']['server_cpu_us_per_call']:,.0f} "
            f"({cell(uv['ratio_server_cpu_per_call'])} times)."
        )
    return "\n".join(lines)
