#!/usr/bin/env python
"""Benchmark atasks over RabbitMQ against a minimal hand-written aio-pika RPC.

    .venv/bin/python dev/bench/bench.py            # full run, a few minutes; prints a table
    .venv/bin/python dev/bench/bench.py --quick    # tiny counts: a smoke test
    .venv/bin/python dev/bench/bench.py --json     # one JSON object on stdout instead
    .venv/bin/python dev/bench/bench.py --broker 4 # on RabbitMQ 4.x (dev/rabbitmq4.py)
    .venv/bin/python dev/bench/bench.py --scaling  # only the scaling phase (scaling.py)

Starts a private RabbitMQ node (``atasks.testing.rabbitnode``): Debian's rabbitmq-server on this
machine, or with ``--broker 4`` Debian sid's from the root dev/rabbitmq4.py builds. Then, for
a 100-character str echoed back: sequential latency (p50, p99) after a warm-up; throughput
with 64 calls in flight; CPU time per call of this client process, of the server processes
(``/proc/<pid>/stat``) and of the broker. The same for the baseline
(``dev/bench/baseline.py``), ratios atasks/baseline, throughput with ``atasks run --workers 1,
2, 4`` and with ``atasks run --events`` (skipped if that option does not exist), stream
items per second for windows of 16, 64 and 256 against plain calls per second on the same
server, the
loopback transport's overhead per call over a direct ``await echo.fn(x)``, and what tracing
(OpenTelemetry with a no-op exporter), one propagated context variable and an auth context add
to a loopback call, measured against none of them in the same run. Progress goes to
stderr; the whole run takes a few minutes. See dev/bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dev/, for rabbitnode
sys.path.insert(0, str(Path(__file__).resolve().parent))  # dev/bench/, for echo and baseline

import aio_pika
import baseline
import echo
import queued
import rabbitmq4

import atasks
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import AMQPTransport

if TYPE_CHECKING:
    from scaling import ScalingSizes

REPO = Path(__file__).resolve().parents[2]
T = TypeVar("T")
Call = Callable[[str], Awaitable[str]]

PAYLOAD = echo.PAYLOAD
READY_TIMEOUT = 60.0  # for a server to start consuming
STOP_TIMEOUT = 15.0  # for a server process to exit after SIGTERM
CLOSE_TIMEOUT = 30.0  # for a client to disconnect
STALL_TIMEOUT = 30.0  # a phase fails when no call finishes for this long
OTHER_LOAD_WARNING = 5.0  # % of the machine's CPU used by other processes worth a warning
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Sizes:
    """How many calls each phase makes."""

    sequential: int = 2_000  # timed one by one per side, after `warmup` untimed ones
    warmup: int = 200
    calls: int = 20_000  # per side, in each throughput phase
    inflight: int = 64
    loopback: int = 20_000  # per side
    rounds: int = 5  # the sides of a comparison take turns, this many times each
    workers: tuple[int, ...] = (1, 2, 4)


QUICK = Sizes(sequential=50, warmup=10, calls=1_000, loopback=1_000, rounds=2)


class BenchError(Exception):
    """A phase could not be measured: a server died, refused to start, or timed out."""


# --- progress ------------------------------------------------------------------------------


class Progress:
    """A ``\\r``-updated progress bar on stderr; one plain line per phase when not a terminal."""

    WIDTH = 24

    def __init__(self, phases: int, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.phases = phases
        self.phase = 0
        self.label = ""
        self.total = 0
        self.count = 0
        self.started = 0.0
        self.drawn = 0.0

    def start(self, label: str, total: int) -> None:
        """Begin a phase of ``total`` steps."""
        self.phase += 1
        self.label, self.total, self.count = label, total, 0
        self.started = self.drawn = time.monotonic()
        if self.tty:
            self._draw(self.started)

    def tick(self) -> None:
        """One step done."""
        self.count += 1
        if self.tty:
            now = time.monotonic()
            if now - self.drawn >= 0.1:
                self._draw(now)

    def finish(self, summary: str = "") -> None:
        """End the phase, with ``summary`` after the bar."""
        self._draw(time.monotonic(), summary)
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self, now: float, summary: str = "") -> None:
        self.drawn = now
        done = min(self.count, self.total)
        filled = self.WIDTH * done // self.total if self.total else self.WIDTH
        bar = "#" * filled + "." * (self.WIDTH - filled)
        line = (
            f"[{self.phase}/{self.phases}] {self.label:<34} [{bar}] {done}/{self.total} "
            f"{now - self.started:5.1f}s {summary}"
        )
        if self.tty:
            self.stream.write(f"\r\x1b[K{line}")
            self.stream.flush()
        elif summary:
            self.stream.write(line)


# --- CPU time from /proc ----------------------------------------------------------------------


def _processes() -> dict[int, tuple[int, float, float]]:
    """pid → (parent pid, CPU seconds in user and kernel mode, those of its reaped children)
    of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # after the name: state ppid ...; utime, stime, cutime, cstime are the 14th to 17th
            # fields of /proc/PID/stat
            utime, stime, cutime, cstime = map(int, fields[11:15])
            table[int(entry)] = (
                int(fields[1]),
                (utime + stime) / CLK_TCK,
                (cutime + cstime) / CLK_TCK,
            )
    return table


def tree_cpu(root: int | None, *, reaped: bool = False) -> float:
    """CPU seconds used so far by ``root`` and its live descendants, and with ``reaped`` by
    the descendants that have exited and been waited for too."""
    if root is None:
        return 0.0
    table = _processes()
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        _, own, children = table[pid]
        total += own + (children if reaped else 0.0)
        todo += [child for child, (parent, _, _) in table.items() if parent == pid]
    return total


@dataclass
class OtherLoad:
    """How much CPU processes other than this one and its descendants use, from now on: a
    machine busy with other work skews every number."""

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.busy = _machine_busy()
        self.ours = tree_cpu(os.getpid(), reaped=True)

    def percent(self) -> float:
        """Their CPU time since the start, in % of all this machine's CPUs."""
        wall = time.perf_counter() - self.wall
        ours = tree_cpu(os.getpid(), reaped=True) - self.ours
        theirs = max(0.0, _machine_busy() - self.busy - ours)
        return round(100 * theirs / (wall * (os.cpu_count() or 1)), 1)


def _machine_busy() -> float:
    """CPU seconds every process has used since boot, from the first line of /proc/stat."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
        user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[1:8])
    except (OSError, ValueError):
        return 0.0
    return (user + nice + system + irq + softirq) / CLK_TCK


@dataclass
class Usage:
    """Wall and CPU seconds some calls took, summed over rounds."""

    calls: int = 0
    wall: float = 0.0
    client: float = 0.0
    server: float = 0.0
    broker: float = 0.0

    def add(self, other: Usage) -> None:
        """Count ``other``'s calls and seconds in too."""
        self.calls += other.calls
        self.wall += other.wall
        self.client += other.client
        self.server += other.server
        self.broker += other.broker

    def per_call(self) -> dict[str, float]:
        """Seconds of wall time in all, and µs of CPU per call."""
        calls = max(self.calls, 1)
        return {
            "seconds": round(self.wall, 3),
            "client_cpu_us_per_call": round(self.client / calls * 1e6, 1),
            "server_cpu_us_per_call": round(self.server / calls * 1e6, 1),
            "broker_cpu_us_per_call": round(self.broker / calls * 1e6, 1),
        }


class Meter:
    """Wall time and CPU time of this client, a server's process tree and the broker, from
    the moment it is made."""

    def __init__(self, server: int | tuple[int, ...] | None, broker: int | None) -> None:
        self.server = (server,) if isinstance(server, int) else server or ()
        self.broker = broker
        self.server_cpu = sum(map(tree_cpu, self.server))
        self.broker_cpu = tree_cpu(broker)
        self.client = time.process_time()  # after reading /proc: that costs CPU too
        self.wall = time.perf_counter()

    def stop(self, calls: int) -> Usage:
        """What ``calls`` calls took since the start."""
        wall = time.perf_counter() - self.wall
        client = time.process_time() - self.client  # before reading /proc
        server = sum(map(tree_cpu, self.server)) - self.server_cpu
        broker = tree_cpu(self.broker) - self.broker_cpu
        return Usage(calls, wall, client, server, broker)


# --- server processes ---------------------------------------------------------------------


class Servers:
    """Server processes, each in a session of its own, stopped by PID."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, label: str, argv: list[str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` in the repository, its output to ``<label>.log``."""
        with open(self.log_dir / f"{label}.log", "wb") as log:
            process = subprocess.Popen(
                argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running[label] = process
        return process

    def check(self) -> None:
        """Raise ``BenchError`` if a server has exited."""
        for label, process in self.running.items():
            if process.poll() is not None:
                raise BenchError(
                    f"server {label!r} exited with code {process.returncode}:\n{self.tail(label)}"
                )

    def tail(self, label: str, lines: int = 20) -> str:
        """The end of a server's log."""
        try:
            text = (self.log_dir / f"{label}.log").read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, label: str) -> None:
        """SIGTERM the server's process group, then SIGKILL it if it does not exit in time."""
        process = self.running.pop(label, None)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(STOP_TIMEOUT)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)  # workers the supervisor left behind

    def stop_all(self) -> None:
        """Stop every server still running."""
        for label in list(self.running):
            self.stop(label)


def atasks_argv(*extra: str, url: str, queue_type: str) -> list[str]:
    """The command line of an atasks echo server."""
    return [
        sys.executable,
        *("-m", "atasks", "run", "dev/bench/echo.py", "--mode", "server"),
        *("--url", url, "-q", "--grace", "1", "--queue-type", queue_type),
        *extra,
    ]


def baseline_argv(url: str, queue_type: str) -> list[str]:
    """The command line of a baseline echo server."""
    return [sys.executable, "dev/bench/baseline.py", "--url", url, "--queue-type", queue_type]


def events_option() -> bool:
    """Whether ``atasks run`` has an ``--events`` option."""
    done = subprocess.run(
        [sys.executable, "-m", "atasks", "run", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    return "--events" in done.stdout


# --- phases --------------------------------------------------------------------------------


async def guarded(
    coro: Coroutine[Any, Any, T],
    what: str,
    budget: float,
    servers: Servers,
    heartbeat: Callable[[], int] | None = None,
) -> T:
    """Await ``coro`` within ``budget`` seconds, giving up as soon as a server dies or, with a
    ``heartbeat`` (a count of calls done), as soon as no call finishes for ``STALL_TIMEOUT``."""
    task = asyncio.ensure_future(coro)
    beat, last_beat = -1, time.monotonic()
    try:
        async with asyncio.timeout(budget):
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if task.done():
                    break
                servers.check()
                now = time.monotonic()
                if heartbeat is not None and heartbeat() != beat:
                    beat, last_beat = heartbeat(), now
                elif now - last_beat > STALL_TIMEOUT:
                    raise BenchError(f"{what}: no call finished for {STALL_TIMEOUT:.0f}s")
        return task.result()
    except TimeoutError:
        if task.done():
            raise
        raise BenchError(f"{what} did not finish within {budget:.0f}s") from None
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=10)


def _budget(calls: int, per_call: float) -> float:
    return 60.0 + calls * per_call


async def wait_ready(call: Call, queue: str, consumers: int, url: str, servers: Servers) -> None:
    """Call until a server answers, then wait for ``consumers`` consumers on ``queue``."""

    async def ready() -> None:
        while True:  # bounded by guarded()
            try:
                if await call(PAYLOAD) == PAYLOAD:
                    break
            except (
                atasks.JobNotFound,
                aio_pika.exceptions.PublishError,
                aio_pika.exceptions.DeliveryError,  # a quorum queue still being declared
            ):
                await asyncio.sleep(0.1)
        connection = await aio_pika.connect(url, timeout=10)
        async with connection:
            channel = await connection.channel()
            while True:
                declared = await channel.declare_queue(queue, passive=True)
                result = declared.declaration_result
                if result is not None and result.consumer_count >= consumers:
                    return
                await asyncio.sleep(0.1)

    await guarded(
        ready(), f"waiting for {consumers} consumer(s) on {queue}", READY_TIMEOUT, servers
    )


@dataclass
class Target:
    """One side of a phase: what it calls, and the processes it meters."""

    label: str
    call: Call
    server: int | tuple[int, ...]  # the server process, or several
    broker: int | None
    completed: int = 0  # calls done, warm-ups included: the heartbeat of guarded()
    payload: str = PAYLOAD  # what each call sends, and expects back

    def meter(self) -> Meter:
        """Start metering this client, the server's process tree and the broker."""
        return Meter(self.server, self.broker)

    async def echo(self) -> None:
        """One call, checked."""
        result = await self.call(self.payload)
        if result != self.payload:
            raise BenchError(f"{self.label} echoed {result[:100]!r}")
        self.completed += 1


def _chunks(total: int, rounds: int) -> list[int]:
    """``total`` split into ``rounds`` (or fewer) positive parts as equal as can be."""
    rounds = max(1, min(rounds, total))
    return [total // rounds + (i < total % rounds) for i in range(rounds)]


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def _heartbeat(targets: list[Target]) -> Callable[[], int]:
    return lambda: sum(target.completed for target in targets)


async def sequential(
    targets: list[Target], sizes: Sizes, servers: Servers, progress: Progress
) -> dict[str, dict[str, float]]:
    """Latency of calls awaited one after another, after a warm-up; the targets take turns."""

    async def run() -> dict[str, tuple[list[float], Usage]]:
        for target in targets:
            for _ in range(sizes.warmup):
                await target.echo()
        labels = " / ".join(target.label for target in targets)
        progress.start(f"{labels}: sequential", sizes.sequential * len(targets))
        measured = {target.label: ([], Usage()) for target in targets}
        for chunk in _chunks(sizes.sequential, sizes.rounds):
            for target in targets:
                latencies, usage = measured[target.label]
                meter = target.meter()
                for _ in range(chunk):
                    t0 = time.perf_counter()
                    await target.echo()
                    latencies.append(time.perf_counter() - t0)
                    progress.tick()
                usage.add(meter.stop(chunk))
        return measured

    calls = (sizes.warmup + sizes.sequential) * len(targets)
    measured = await guarded(
        run(), "sequential calls", _budget(calls, 0.05), servers, _heartbeat(targets)
    )
    results = {}
    for label, (latencies, usage) in measured.items():
        latencies.sort()
        results[label] = {
            "calls": len(latencies),
            "p50_us": round(_percentile(latencies, 0.50) * 1e6, 1),
            "p99_us": round(_percentile(latencies, 0.99) * 1e6, 1),
            "mean_us": round(sum(latencies) / len(latencies) * 1e6, 1),
            **usage.per_call(),
        }
    progress.finish(
        "; ".join(
            f"{label} p50 {r['p50_us']:.0f}µs p99 {r['p99_us']:.0f}µs"
            for label, r in results.items()
        )
    )
    return results


async def flood(target: Target, inflight: int, total: int, tick: Callable[[], None]) -> None:
    """``total`` calls, ``inflight`` at a time; ``tick`` after each."""
    issued = 0

    async def worker() -> None:
        nonlocal issued
        while issued < total:
            issued += 1
            await target.echo()
            tick()

    await asyncio.gather(*(worker() for _ in range(min(inflight, total))))


async def throughput(
    targets: list[Target], sizes: Sizes, servers: Servers, progress: Progress
) -> dict[str, dict[str, float]]:
    """Calls per second with ``sizes.inflight`` calls in flight, after a short warm-up; the
    targets take turns."""

    async def run() -> dict[str, Usage]:
        for target in targets:
            await flood(target, sizes.inflight, sizes.inflight * 4, lambda: None)
        labels = " / ".join(target.label for target in targets)
        progress.start(f"{labels}: {sizes.inflight} in flight", sizes.calls * len(targets))
        usage = {target.label: Usage() for target in targets}
        for chunk in _chunks(sizes.calls, sizes.rounds):
            for target in targets:
                meter = target.meter()
                await flood(target, sizes.inflight, chunk, progress.tick)
                usage[target.label].add(meter.stop(chunk))
        return usage

    calls = (sizes.inflight * 4 + sizes.calls) * len(targets)
    usage = await guarded(
        run(), "calls in flight", _budget(calls, 0.01), servers, _heartbeat(targets)
    )
    results = {
        label: {
            "calls": used.calls,
            "inflight": sizes.inflight,
            "calls_per_s": round(used.calls / used.wall, 1),
            **used.per_call(),
        }
        for label, used in usage.items()
    }
    progress.finish(
        "; ".join(f"{label} {r['calls_per_s']:.0f} calls/s" for label, r in results.items())
    )
    return results


async def loopback_overhead(sizes: Sizes, progress: Progress) -> dict[str, float]:
    """Time per ``await echo(x)`` over the loopback transport minus per ``await echo.fn(x)``,
    in rounds that take turns."""
    fn = echo.echo.fn
    chunks = _chunks(sizes.loopback, sizes.rounds * 2)
    progress.start("loopback vs direct", 2 * len(chunks))
    await atasks.setup("loopback")
    try:
        async with asyncio.timeout(_budget(sizes.loopback * 2, 0.005)):
            for _ in range(min(sizes.loopback, 1_000)):
                await echo.echo(PAYLOAD)
            through_atasks = direct = 0.0
            for chunk in chunks:
                t0 = time.perf_counter()
                for _ in range(chunk):
                    await echo.echo(PAYLOAD)
                through_atasks += time.perf_counter() - t0
                progress.tick()
                t0 = time.perf_counter()
                for _ in range(chunk):
                    await fn(PAYLOAD)
                direct += time.perf_counter() - t0
                progress.tick()
    finally:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await atasks.close(grace=1)
    loopback_us = through_atasks / sizes.loopback * 1e6
    direct_us = direct / sizes.loopback * 1e6
    result = {
        "calls": sizes.loopback,
        "loopback_us_per_call": round(loopback_us, 2),
        "direct_us_per_call": round(direct_us, 3),
        "overhead_us_per_call": round(loopback_us - direct_us, 2),
    }
    progress.finish(f"overhead {result['overhead_us_per_call']:.1f}µs/call")
    return result


CONTEXT_MODES = ("off", "otel", "contextvar", "auth")


class _NoopExporter:
    """A span exporter that drops every span: the cost measured is making them."""

    def export(self, spans: Any) -> Any:
        from opentelemetry.sdk.trace.export import SpanExportResult

        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


async def context_overhead(sizes: Sizes, progress: Progress) -> dict[str, Any]:
    """µs per loopback ``await echo(x)`` with nothing travelling ("off"), with OpenTelemetry on
    (an SDK tracer provider, spans to a no-op exporter: a client and a server span per call),
    with one propagated context variable set, and inside an auth context — in rounds that take
    turns; and each one's cost over "off"."""
    from contextvars import ContextVar

    provider: Any = None
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    except ImportError:  # measured without it
        pass
    else:
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_NoopExporter()))  # type: ignore[arg-type]
    modes = CONTEXT_MODES if provider is not None else ("off", "contextvar", "auth")
    request_id: ContextVar[str] = ContextVar("bench_request_id")

    @contextlib.asynccontextmanager
    async def mode(name: str) -> Any:
        if name == "otel":
            atasks.tracing.instrument(provider)
        elif name == "contextvar":
            atasks.propagate(request_id)
            token = request_id.set("req-0123456789")
        try:
            if name == "auth":
                async with atasks.auth({"user": "bench", "roles": ["reader"]}, ttl=3600):
                    yield
            else:
                yield
        finally:
            if name == "otel":
                atasks.tracing.uninstrument()
            elif name == "contextvar":
                request_id.reset(token)
                atasks.unpropagate(request_id)

    chunks = _chunks(sizes.loopback, sizes.rounds * 2)
    progress.start("loopback: tracing, context, auth", len(modes) * len(chunks))
    await atasks.setup("loopback")  # unsigned pickle, as in the loopback phase…
    os.environ["ATASKS_SECRET"] = "bench"  # …and a key for auth alone
    spent = dict.fromkeys(modes, 0.0)
    try:
        async with asyncio.timeout(_budget(sizes.loopback * len(modes), 0.01)):
            for name in modes:
                async with mode(name):
                    for _ in range(min(sizes.loopback, 1_000)):
                        await echo.echo(PAYLOAD)
            for chunk in chunks:
                for name in modes:
                    async with mode(name):
                        t0 = time.perf_counter()
                        for _ in range(chunk):
                            await echo.echo(PAYLOAD)
                        spent[name] += time.perf_counter() - t0
                    progress.tick()
    finally:
        del os.environ["ATASKS_SECRET"]
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await atasks.close(grace=1)
    per_call = {name: spent[name] / sizes.loopback * 1e6 for name in modes}
    result: dict[str, Any] = {"calls": sizes.loopback, "otel_skipped": provider is None}
    for name in modes:
        result[f"{name}_us_per_call"] = round(per_call[name], 2)
        if name != "off":
            result[f"{name}_cost_us_per_call"] = round(per_call[name] - per_call["off"], 2)
    progress.finish(
        "; ".join(
            f"{name} +{result[f'{name}_cost_us_per_call']:.1f}µs" for name in modes if name != "off"
        )
    )
    return result


# --- the run -------------------------------------------------------------------------------


@dataclass
class Bench:
    """One run: the broker, the servers, the sizes and the progress bar."""

    url: str
    broker: int | None
    sizes: Sizes
    servers: Servers
    progress: Progress
    queue_type: str

    async def atasks_server(
        self, label: str, extra: tuple[str, ...] = (), consumers: int = 1
    ) -> Target:
        """Start an atasks echo server and wait until ``consumers`` processes consume."""
        server = self.servers.start(
            label, atasks_argv(*extra, url=self.url, queue_type=self.queue_type)
        )
        return await self.atasks_ready(server, label, consumers)

    async def atasks_ready(
        self, server: subprocess.Popen[bytes], label: str, consumers: int = 1
    ) -> Target:
        """Wait until ``consumers`` processes of an atasks echo server consume."""
        transport = atasks.get_transport()
        assert isinstance(transport, AMQPTransport)
        await wait_ready(
            echo.echo, transport.queue_name(echo.NAME), consumers, self.url, self.servers
        )
        return Target(label, echo.echo, server.pid, self.broker)

    async def compare(self) -> dict[str, dict[str, Any]]:
        """atasks and the baseline, both served at once, taking turns in every phase so that
        a machine slowing down or speeding up weighs on both alike."""
        base_server = self.servers.start("baseline", baseline_argv(self.url, self.queue_type))
        client = baseline.BaselineClient(self.url)
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await client.connect()
            await wait_ready(client.call, baseline.QUEUE, 1, self.url, self.servers)
            targets = [
                Target("baseline", client.call, base_server.pid, self.broker),
                await self.atasks_server("atasks"),
            ]
            seq = await sequential(targets, self.sizes, self.servers, self.progress)
            thr = await throughput(targets, self.sizes, self.servers, self.progress)
            return {
                target.label: {"sequential": seq[target.label], "throughput": thr[target.label]}
                for target in targets
            }
        finally:
            try:
                async with asyncio.timeout(CLOSE_TIMEOUT):
                    await client.close()
            finally:
                self.servers.stop_all()

    async def alone(self, label: str, extra: tuple[str, ...], consumers: int) -> dict[str, float]:
        """Throughput of one atasks server started with ``extra`` arguments."""
        target = await self.atasks_server(label, extra, consumers)
        try:
            return (await throughput([target], self.sizes, self.servers, self.progress))[label]
        finally:
            self.servers.stop(label)

    async def streams(self) -> dict[str, Any]:
        """Items per second of streams of each window in ``echo.STREAMS``, against calls per
        second of plain calls (in flight) on the same server, the two taking turns."""
        label = "atasks streams"
        target = await self.atasks_server(label)
        items = self.sizes.calls
        windows = echo.STREAM_WINDOWS
        used = {window: Usage() for window in windows}

        async def run() -> dict[str, float]:
            plain = await throughput([target], self.sizes, self.servers, self.progress)
            self.progress.start(f"{label}: windows {windows}", items * len(windows))
            for chunk in _chunks(items, self.sizes.rounds):
                for window in windows:
                    meter = target.meter()
                    async for value in echo.STREAMS[window](chunk, PAYLOAD):
                        if value != PAYLOAD:
                            raise BenchError(f"a stream yielded {value!r}")
                        target.completed += 1
                        self.progress.tick()
                    used[window].add(meter.stop(chunk))
            return plain[label]

        try:
            plain = await guarded(
                run(),
                "streams",
                _budget(items * len(windows) + self.sizes.calls, 0.01),
                self.servers,
                _heartbeat([target]),
            )
        finally:
            self.servers.stop(label)
        result: dict[str, Any] = {"items": items, "calls_per_s": plain["calls_per_s"]}
        for window, usage in used.items():
            per_item = usage.per_call()
            result[f"window_{window}"] = {
                "items_per_s": round(usage.calls / usage.wall, 1),
                "client_cpu_us_per_item": per_item["client_cpu_us_per_call"],
                "server_cpu_us_per_item": per_item["server_cpu_us_per_call"],
                "broker_cpu_us_per_item": per_item["broker_cpu_us_per_call"],
            }
        self.progress.finish(
            "; ".join(
                f"window {w}: {result[f'window_{w}']['items_per_s']:,.0f} items/s" for w in windows
            )
            + f"; plain calls {plain['calls_per_s']:,.0f}/s"
        )
        return result

    async def workers(self) -> dict[str, dict[str, float]]:
        """Throughput with ``atasks run --workers N``."""
        return {
            str(count): await self.alone(
                f"atasks --workers {count}", ("--workers", str(count)), count
            )
            for count in self.sizes.workers
        }

    async def fire_and_forget(self) -> dict[str, Any]:
        """Confirmed publishes per second of ``@atask_queue`` against aio-pika's, no server."""
        transport = atasks.get_transport()
        assert isinstance(transport, AMQPTransport)
        sizes = self.sizes
        self.progress.start("atasks / baseline: fire and forget", sizes.calls * 2)
        result = await guarded(
            queued.measure(
                self.url, transport, sizes.calls, sizes.inflight, sizes.rounds, self.progress.tick
            ),
            "fire-and-forget publishes",
            _budget(sizes.calls * 2, 0.01),
            self.servers,
        )
        self.progress.finish(
            f"atasks {result['atasks_publishes_per_s']:.0f}/s, baseline "
            f"{result['baseline_publishes_per_s']:.0f}/s confirmed publishes"
        )
        return result

    # ---- EVENTS/TRACKING ON -----------------------------------------------------------------
    # Throughput of a server started with `atasks run --events` (lifecycle events published to
    # the namespace's events exchange, with no consumer bound to it). Skipped, with a note, when
    # `atasks run --help` lists no --events option.
    async def events(self, available: bool) -> dict[str, Any]:
        """Throughput with ``atasks run --events``, if that option exists."""
        if not available:
            note = "`atasks run` has no --events option yet"
            self.progress.start("atasks --events", 0)
            self.progress.finish(f"skipped: {note}")
            return {"skipped": True, "note": note}
        return {
            "skipped": False,
            "throughput": await self.alone("atasks --events", ("--events",), 1),
        }


def _ratio(a: float, b: float) -> float | None:
    """``a / b``, or ``None`` (JSON null) when ``b`` is zero."""
    return round(a / b, 2) if b else None


def ratios(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, float | None]:
    """atasks / baseline for each headline number."""
    seq, base_seq = ours["sequential"], theirs["sequential"]
    thr, base_thr = ours["throughput"], theirs["throughput"]

    def total(side: dict[str, float]) -> float:
        keys = ("client_cpu_us_per_call", "server_cpu_us_per_call", "broker_cpu_us_per_call")
        return sum(side[key] for key in keys)

    return {
        "p50": _ratio(seq["p50_us"], base_seq["p50_us"]),
        "p99": _ratio(seq["p99_us"], base_seq["p99_us"]),
        "throughput": _ratio(thr["calls_per_s"], base_thr["calls_per_s"]),
        "client_cpu_per_call": _ratio(
            thr["client_cpu_us_per_call"], base_thr["client_cpu_us_per_call"]
        ),
        "server_cpu_per_call": _ratio(
            thr["server_cpu_us_per_call"], base_thr["server_cpu_us_per_call"]
        ),
        "broker_cpu_per_call": _ratio(
            thr["broker_cpu_us_per_call"], base_thr["broker_cpu_us_per_call"]
        ),
        "total_cpu_per_call": _ratio(total(thr), total(base_thr)),
    }


def environment(node: RabbitNode, queue_type: str, replies: str) -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "queue_type": queue_type,
        "replies": replies,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "atasks": metadata.version("atasks"),
        "aio_pika": metadata.version("aio-pika"),
        "aiormq": metadata.version("aiormq"),
        "rabbitmq": node.version or "unknown",
        "payload": f"str of {len(PAYLOAD)} characters",
        "load_average_at_start": _load_average(),
    }


def _load_average() -> float | None:
    """The 1-minute load average: other work on the machine skews every number."""
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def broker_pid(node: RabbitNode) -> int | None:
    """The pid of the node's Erlang VM, from its pid file, if it wrote one."""
    with contextlib.suppress(OSError, ValueError):
        return int((node.data / "rabbit.pid").read_text().strip())
    return None


async def measure(
    node: RabbitNode, sizes: Sizes, servers: Servers, queue_type: str, replies: str
) -> dict[str, Any]:
    """Every phase, in order: atasks against the baseline, workers, events, loopback, context."""
    events = events_option()
    progress = Progress(2 + len(sizes.workers) + 1 + 1 + 2 + 1 + 1)
    bench = Bench(node.url, broker_pid(node), sizes, servers, progress, queue_type)
    started = time.monotonic()
    other_load = OtherLoad()
    results: dict[str, Any] = {
        "environment": environment(node, queue_type, replies),
        "sizes": asdict(sizes),
    }
    async with asyncio.timeout(READY_TIMEOUT):
        await atasks.setup("amqp", url=node.url, replies=replies)
    try:
        results.update(await bench.compare())
        results["ratios"] = ratios(results["atasks"], results["baseline"])
        results["workers"] = await bench.workers()
        results["events"] = await bench.events(events)
        results["streams"] = await bench.streams()
        results["fire_and_forget"] = await bench.fire_and_forget()
    finally:
        async with asyncio.timeout(CLOSE_TIMEOUT):
            await atasks.close(grace=1)
    results["loopback"] = await loopback_overhead(sizes, progress)
    results["context"] = await context_overhead(sizes, progress)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["environment"]["other_processes_cpu_percent"] = other_load.percent()
    return results


async def measure_scaling(
    node: RabbitNode, sizes: Sizes, scaled: ScalingSizes, servers: Servers, queue_type: str
) -> dict[str, Any]:
    """The scaling phase alone (dev/bench/scaling.py)."""
    import scaling  # imports this module: not at the top

    progress = Progress(scaling.phases(scaled))
    bench = Bench(node.url, broker_pid(node), sizes, servers, progress, queue_type)
    started = time.monotonic()
    other_load = OtherLoad()
    results: dict[str, Any] = {"environment": environment(node, queue_type, "direct")}
    results["scaling"] = await scaling.run(bench, scaled)
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["environment"]["other_processes_cpu_percent"] = other_load.percent()
    return results


# --- output --------------------------------------------------------------------------------


def table(results: dict[str, Any]) -> str:
    """The results as markdown tables, to paste into a README."""
    ours, theirs, ratio = results["atasks"], results["baseline"], results["ratios"]
    env, sizes = results["environment"], results["sizes"]
    lines = [
        f"atasks {env['atasks']}, aio-pika {env['aio_pika']}, aiormq {env['aiormq']}, "
        f"RabbitMQ {env['rabbitmq']} ({env['queue_type']} request queues on both sides; "
        f"atasks replies: {env['replies']}), "
        f"Python {env['python']}, {env['cpus']} CPUs; "
        f"payload: {env['payload']}; client, servers and broker on this one machine; other "
        f"processes used {env['other_processes_cpu_percent']}% of its CPU during the run.",
        "",
    ]
    if env["other_processes_cpu_percent"] > OTHER_LOAD_WARNING:
        lines += ["**Other work was running on this machine: these numbers are skewed.**", ""]
    lines += [
        "| | atasks | baseline (aio-pika) | atasks / baseline |",
        "| --- | ---: | ---: | ---: |",
    ]

    def row(name: str, a: float, b: float, r: float | None) -> None:
        shown = "n/a" if r is None else f"{r:.2f}"
        lines.append(f"| {name} | {a:,.0f} | {b:,.0f} | {shown} |")

    seq, bseq = ours["sequential"], theirs["sequential"]
    thr, bthr = ours["throughput"], theirs["throughput"]
    row(
        f"latency p50, sequential (µs; {seq['calls']:,} calls)",
        seq["p50_us"],
        bseq["p50_us"],
        ratio["p50"],
    )
    row("latency p99, sequential (µs)", seq["p99_us"], bseq["p99_us"], ratio["p99"])
    row(
        f"throughput, {thr['inflight']} in flight (calls/s; {thr['calls']:,} calls)",
        thr["calls_per_s"],
        bthr["calls_per_s"],
        ratio["throughput"],
    )
    for side, key in (("client", "client_cpu"), ("server", "server_cpu"), ("broker", "broker_cpu")):
        row(
            f"{side} CPU per call, under throughput (µs)",
            thr[f"{key}_us_per_call"],
            bthr[f"{key}_us_per_call"],
            ratio[f"{key}_per_call"],
        )
    row(
        "client + server + broker CPU per call (µs)",
        sum(thr[f"{k}_us_per_call"] for k in ("client_cpu", "server_cpu", "broker_cpu")),
        sum(bthr[f"{k}_us_per_call"] for k in ("client_cpu", "server_cpu", "broker_cpu")),
        ratio["total_cpu_per_call"],
    )
    for side, key in (("client", "client_cpu"), ("server", "server_cpu")):
        a, b = seq[f"{key}_us_per_call"], bseq[f"{key}_us_per_call"]
        row(f"{side} CPU per call, sequential (µs)", a, b, _ratio(a, b))

    lines += [
        "",
        f"| atasks run --workers N ({sizes['calls']:,} calls, {sizes['inflight']} in flight) "
        "| calls/s | server CPU/call (µs) | client CPU/call (µs) | broker CPU/call (µs) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for count, w in results["workers"].items():
        lines.append(
            f"| {count} | {w['calls_per_s']:,.0f} | {w['server_cpu_us_per_call']:,.0f} | "
            f"{w['client_cpu_us_per_call']:,.0f} | {w['broker_cpu_us_per_call']:,.0f} |"
        )
    loop = results["loopback"]
    events = results["events"]
    if events["skipped"]:
        events_text = f"skipped ({events['note']})"
    else:
        on = events["throughput"]
        events_text = (
            f"{on['calls_per_s']:,.0f} calls/s, server CPU {on['server_cpu_us_per_call']:,.0f} "
            f"µs/call, broker CPU {on['broker_cpu_us_per_call']:,.0f} µs/call, client CPU "
            f"{on['client_cpu_us_per_call']:,.0f} µs/call (no consumer bound to the events "
            "exchange)"
        )
    streams = results["streams"]
    lines += [
        "",
        f"| streams ({streams['items']:,} items each) | items/s | items per plain call "
        f"({streams['calls_per_s']:,.0f}, {sizes['inflight']} in flight) | server CPU/item (µs) "
        "| broker CPU/item (µs) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for key, window in streams.items():
        if key.startswith("window_"):
            lines.append(
                f"| window {key.removeprefix('window_')} | {window['items_per_s']:,.0f} | "
                f"{window['items_per_s'] / streams['calls_per_s']:.1f} | "
                f"{window['server_cpu_us_per_item']:,.0f} | "
                f"{window['broker_cpu_us_per_item']:,.0f} |"
            )
    lines += [
        "",
        "| loopback transport (no broker) | µs per call |",
        "| --- | ---: |",
        f"| `await echo(x)`, loopback | {loop['loopback_us_per_call']:.1f} |",
        f"| `await echo.fn(x)`, direct | {loop['direct_us_per_call']:.2f} |",
        f"| overhead of atasks per call | {loop['overhead_us_per_call']:.1f} |",
        "",
        *context_table(results["context"]),
        "",
        f"Events on (`atasks run --events`): {events_text}.",
        "",
        *fire_and_forget_table(results["fire_and_forget"]),
        "",
        "Baseline: transient messages, request confirmed, reply not; exclusive reply queue; "
        "prefetch 64. atasks: persistent requests, request and reply confirmed, request acked "
        "after its reply is confirmed; "
        + (
            "a durable quorum reply queue per client (replies outlive a lost connection)."
            if env["replies"] == "durable"
            else "direct reply-to, resumed after a reconnect (replies kept by the servers)."
        )
        + f" Both: durable {env['queue_type']} request queue. Both servers run at once and "
        f"the two sides take turns, {sizes['rounds']} rounds per phase; CPU is user + system "
        "time from /proc (the client: this process).",
    ]
    return "\n".join(lines)


def fire_and_forget_table(result: dict[str, Any]) -> list[str]:
    """The fire-and-forget phase as a markdown table."""
    ratio = "n/a" if result["ratio"] is None else f"{result['ratio']:.2f}"
    return [
        f"| fire and forget, {result['calls']:,} requests, {result['inflight']} in flight "
        "| confirmed publishes/s |",
        "| --- | ---: |",
        f"| `@atask_queue`: `await echo_queued(x)` | {result['atasks_publishes_per_s']:,.0f} |",
        f"| baseline: aio-pika confirmed publish, durable quorum queue "
        f"| {result['baseline_publishes_per_s']:,.0f} |",
        f"| atasks / baseline | {ratio} |",
    ]


def context_table(context: dict[str, Any]) -> list[str]:
    """The context phase as a markdown table."""
    labels = {
        "off": "nothing travelling",
        "otel": "OpenTelemetry on (SDK provider, no-op exporter)",
        "contextvar": "one propagated context variable",
        "auth": "an auth context (signed per call)",
    }
    lines = [
        f"| loopback, {context['calls']:,} calls each, taking turns | µs per call | "
        "cost over nothing (µs) |",
        "| --- | ---: | ---: |",
    ]
    for name in CONTEXT_MODES:
        if f"{name}_us_per_call" not in context:
            lines.append(f"| {labels[name]} | skipped (no opentelemetry-sdk) | |")
            continue
        cost = context.get(f"{name}_cost_us_per_call")
        shown = "" if cost is None else f"{cost:+.1f}"
        lines.append(f"| {labels[name]} | {context[f'{name}_us_per_call']:.1f} | {shown} |")
    return lines


# --- command line --------------------------------------------------------------------------


def parse_args(
    argv: list[str] | None = None,
) -> tuple[Sizes, bool, Path | None, str, str, ScalingSizes | None]:
    """The sizes, whether to print JSON, the root directory of the broker (None: this
    machine's), the request queues' type, the replies, and the sizes of the scaling phase
    when it is to run alone."""
    parser = argparse.ArgumentParser(
        description="Benchmark atasks over a private RabbitMQ node against a minimal aio-pika RPC."
    )
    parser.add_argument("--quick", action="store_true", help="tiny counts: a smoke test")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--scaling",
        action="store_true",
        help="only the scaling phase (dev/bench/scaling.py): calls in flight from 1 to 4,096, "
        "payloads up to 16 MB, memory per call, server processes, uvloop",
    )
    parser.add_argument("--calls", type=int, metavar="N", help="calls per throughput phase")
    parser.add_argument("--sequential", type=int, metavar="N", help="timed sequential calls")
    parser.add_argument(
        "--broker",
        choices=["3", "4"],
        default="3",
        help="RabbitMQ 3.x: this machine's rabbitmq-server (default); 4.x: Debian sid's, from the "
        "root dev/rabbitmq4.py builds ($ATASKS_RABBITMQ4_ROOT or its cache)",
    )
    parser.add_argument(
        "--queue-type",
        choices=["quorum", "classic"],
        default="quorum",
        help="request queues of both atasks and the baseline (default: quorum, atasks' default)",
    )
    parser.add_argument(
        "--replies",
        choices=["direct", "durable"],
        default="direct",
        help="how atasks' client takes replies (default: direct, atasks' default)",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else Sizes()
    for name in ("calls", "sequential"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                parser.error(f"--{name} must be at least 1")
            sizes = replace(sizes, **{name: value})
    root = rabbitmq4.find() if args.broker == "4" else None
    if args.broker == "4" and root is None:
        parser.error("no RabbitMQ 4.x root: build it with `python3 dev/rabbitmq4.py` (as root)")
    scaled = None
    if args.scaling:
        import scaling  # imports this module: not at the top

        scaled = scaling.QUICK_SCALING if args.quick else scaling.ScalingSizes()
    return sizes, args.json, root, args.queue_type, args.replies, scaled


def clean_environment() -> None:
    """The same settings on both sides: atasks' defaults, but unsigned pickle, as the baseline
    and earlier runs use (refused over a broker unless asked for; older atasks ignore it)."""
    for key in [key for key in os.environ if key.startswith("ATASKS_")]:
        del os.environ[key]
    os.environ["ATASKS_INSECURE_PICKLE"] = "1"


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    """A temporary directory for the node and the logs; kept, and named, if the run fails."""
    path = Path(tempfile.mkdtemp(prefix="atasks-bench-"))
    try:
        yield path
    except BaseException:
        print(f"logs kept in {path}", file=sys.stderr)
        raise
    shutil.rmtree(path, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 on success, 1 when a phase could not be measured."""
    sizes, as_json, root, queue_type, replies, scaled = parse_args(argv)
    # A SIGTERM unwinds like Ctrl-C, so the servers and the node are stopped, not orphaned.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    clean_environment()
    try:
        with workspace() as work:
            servers = Servers(work)
            node = RabbitNode(work / "rabbit", root=root)
            print("starting a private RabbitMQ node...", file=sys.stderr, flush=True)
            try:
                took = node.start()
                print(
                    f"RabbitMQ {node.version} up in {took:.1f}s at {node.url}",
                    file=sys.stderr,
                    flush=True,
                )
                if scaled is not None:
                    results = asyncio.run(measure_scaling(node, sizes, scaled, servers, queue_type))
                else:
                    results = asyncio.run(measure(node, sizes, servers, queue_type, replies))
            finally:
                servers.stop_all()
                node.close()
    except BenchError as exc:
        print(f"\nbench failed: {exc}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(results, allow_nan=False))
    elif scaled is not None:
        import scaling  # imports this module: not at the top

        print(scaling.table(results))
    else:
        print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
