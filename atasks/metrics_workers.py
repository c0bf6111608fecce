"""One ``/metrics`` for ``atasks run --workers N --metrics-port PORT``: prometheus_client's
multiprocess mode.

The supervisor makes a private directory and names it to its workers
(``PROMETHEUS_MULTIPROC_DIR``, read by prometheus_client when a worker imports it, and
``ATASKS_METRICS_DIR``, which tells a worker to measure). Each worker writes its metrics to
files there; the supervisor serves ``/metrics``, adding up every worker's files on each scrape
(counters and histograms of workers that died included, so totals never go back; the
in-progress gauges of a worker that died are dropped). The supervisor removes the directory
when it stops.

A worker cannot be asked on scrape: it measures ``atasks_waiting`` and
``atasks_queue_depth`` every ``REFRESH`` seconds instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from atasks.endpoints import Answer, serve_endpoints
from atasks.measuring import OUTCOMES, Measuring, waiting
from atasks.metrics import BUCKETS, ServerState
from atasks.router import get_router

log = logging.getLogger("atasks.metrics")

DIR_ENV = "ATASKS_METRICS_DIR"
PROMETHEUS_ENV = "PROMETHEUS_MULTIPROC_DIR"
REFRESH = 5.0


class SharedMetrics:
    """The supervisor's side: the directory, and ``/metrics`` on ``host:port``."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.path = ""
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path = tempfile.mkdtemp(prefix="atasks-metrics-")
        os.environ[DIR_ENV] = os.environ[PROMETHEUS_ENV] = self.path  # the workers'
        try:
            self._server = await serve_endpoints(self.host, self.port, {"/metrics": self.scrape})
        except BaseException:
            await self.stop()
            raise
        log.info(
            "serving /metrics of all workers on %s:%d (their files in %s)",
            self.host,
            self.port,
            self.path,
        )

    async def scrape(self) -> Answer:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.path)  # type: ignore[no-untyped-call]
        body = await asyncio.to_thread(generate_latest, registry)
        return 200, CONTENT_TYPE_LATEST, body

    def worker_exited(self, pid: int) -> None:
        mark_process_dead(pid, self.path)  # type: ignore[no-untyped-call]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.wait_closed()
        for name in (DIR_ENV, PROMETHEUS_ENV):
            os.environ.pop(name, None)
        if self.path:
            shutil.rmtree(self.path, ignore_errors=True)


def measure_worker(namespaces: Sequence[str]) -> asyncio.Task[None] | None:
    """In a supervised worker whose supervisor serves the metrics: a ``Metrics`` middleware on
    each router of ``namespaces``, and the task that measures waiting calls and queue depths
    until cancelled. ``None`` elsewhere."""
    if not os.environ.get(DIR_ENV):
        return None
    metrics = FileMetrics()
    for name in namespaces:
        get_router(name).add_middleware(metrics)
    return asyncio.ensure_future(_refresh(ServerState(namespaces), metrics))


class FileMetrics(Measuring):
    """The metrics of ``atasks.metrics.Metrics`` as prometheus_client's own, which write to
    the multiprocess directory."""

    def __init__(self) -> None:
        super().__init__()
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "atasks_calls",
            "Calls served, by atask and outcome.",
            ["atask", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "atasks_call_duration_seconds",
            "How long calls took to serve, retries included.",
            ["atask"],
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.running = Gauge(
            "atasks_running",
            "Calls in progress on this server.",
            ["atask"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )

    def meter(self, atask: str) -> _Children:
        return _Children(self, atask)


class _Children:
    """The labelled metrics of one atask (``labels()`` costs a lock and a tuple: once)."""

    __slots__ = ("duration", "outcomes", "running")

    def __init__(self, metrics: FileMetrics, name: str) -> None:
        self.running = metrics.running.labels(name)
        self.duration = metrics.duration.labels(name)
        self.outcomes = {outcome: metrics.calls.labels(name, outcome) for outcome in OUTCOMES}

    def started(self) -> None:
        self.running.inc()

    def finished(self, outcome: str, seconds: float) -> None:
        self.running.dec()
        self.duration.observe(seconds)
        self.outcomes[outcome].inc()


async def _refresh(state: ServerState, metrics: FileMetrics) -> None:
    held = Gauge(
        "atasks_waiting",
        "Calls waiting for a slot.",
        registry=metrics.registry,
        multiprocess_mode="livesum",
    )
    depth = Gauge(
        "atasks_queue_depth",
        "Requests ready in a served request queue.",
        ["queue"],
        registry=metrics.registry,
        multiprocess_mode="livemostrecent",
    )
    while True:
        held.set(waiting(state.namespaces))
        await state.refresh()
        for queue, messages in state.depths.items():
            depth.labels(queue).set(messages)
        await asyncio.sleep(REFRESH)
