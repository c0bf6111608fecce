"""Prometheus metrics of a server (``pip install atasks[prometheus]``): a serve-side middleware
and, for ``atasks run --metrics-port``, the ``/metrics`` route.

- ``atasks_calls_total{atask,outcome}``: calls served, by outcome (succeeded, failed, cancelled;
  a call retried counts once, with its last outcome);
- ``atasks_call_duration_seconds{atask}``: how long each took, retries and waits included;
- ``atasks_running{atask}``: calls in progress on this server (running, or waiting for a slot or
  for their next attempt);
- ``atasks_waiting``: calls waiting for a slot (read from the routers' slots on scrape);
- ``atasks_queue_depth{queue}``: requests ready in the request queue of each atask this server
  serves (a passive declare on the server's connection, on scrape, bounded in time).
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from atasks.endpoints import Answer, Route
from atasks.measuring import OUTCOMES, Measuring, waiting
from atasks.router import get_router

DEPTH_WITHIN = 5.0
"""Seconds a scrape waits for the broker's queue depths; without them it goes on."""


BUCKETS = Histogram.DEFAULT_BUCKETS[:-1]
"""Upper bounds of ``atasks_call_duration_seconds``' buckets, in seconds (and +Inf)."""


class Metrics(Measuring, Collector):
    """Counts and times the calls a server serves into ``registry``: add it to a router
    (``router.add_middleware(Metrics())``) or ``atasks.setup(middleware=[Metrics()])``.

    A call adds to plain numbers of this process (a few µs less per call than
    prometheus_client's locked metrics); the registry reads them on scrape. Several processes
    sharing one endpoint measure with ``atasks.metrics_workers`` instead."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        super().__init__()
        self.registry = registry if registry is not None else CollectorRegistry()
        self.registry.register(self)
        self._tallies: dict[str, _Tally] = {}

    def meter(self, atask: str) -> _Tally:
        found = self._tallies[atask] = _Tally()
        return found

    def collect(self) -> Iterator[Metric]:
        calls = CounterMetricFamily(
            "atasks_calls", "Calls served, by atask and outcome.", labels=["atask", "outcome"]
        )
        duration = HistogramMetricFamily(
            "atasks_call_duration_seconds",
            "How long calls took to serve, retries included.",
            labels=["atask"],
        )
        running = GaugeMetricFamily(
            "atasks_running", "Calls in progress on this server.", labels=["atask"]
        )
        for name, tally in sorted(self._tallies.items()):
            for outcome, count in tally.outcomes.items():
                calls.add_metric([name, outcome], count)
            cumulative = list(itertools.accumulate(tally.buckets))
            bounds = [*map(floatToGoString, BUCKETS), "+Inf"]
            duration.add_metric([name], list(zip(bounds, cumulative, strict=True)), tally.sum)
            running.add_metric([name], tally.running)
        yield from (calls, duration, running)

    def exposition(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class _Tally:
    """The numbers of one atask: plain ints and floats, one event loop adding to them."""

    __slots__ = ("buckets", "outcomes", "running", "sum")

    def __init__(self) -> None:
        self.running = 0
        self.sum = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)
        self.outcomes = dict.fromkeys(OUTCOMES, 0)

    def started(self) -> None:
        self.running += 1

    def finished(self, outcome: str, seconds: float) -> None:
        self.running -= 1
        self.sum += seconds
        self.buckets[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.outcomes[outcome] += 1


class ServerState(Collector):
    """On scrape: calls waiting for a slot, and the depth of the served request queues."""

    def __init__(self, namespaces: Sequence[str]) -> None:
        self.namespaces = list(namespaces)
        self.depths: dict[str, int] = {}

    async def refresh(self) -> None:
        """Ask the broker for the depth of each request queue served, within ``DEPTH_WITHIN``;
        a queue it did not answer for is left out."""
        depths: dict[str, int] = {}
        try:
            async with asyncio.timeout(DEPTH_WITHIN):
                for name in self.namespaces:
                    router = get_router(name)
                    transport = router.serving
                    ask = getattr(transport, "queue_depths", None)
                    served = list(router.statistics().atasks)
                    if ask is None or not served:
                        continue
                    for found in (await ask(served)).values():
                        if found is not None:
                            depths[found["queue"]] = found["messages"]
        except Exception:  # a scrape without (some) depths beats a failed scrape
            pass
        self.depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        found = GaugeMetricFamily("atasks_waiting", "Calls waiting for a slot.")
        found.add_metric([], waiting(self.namespaces))
        yield found
        depth = GaugeMetricFamily(
            "atasks_queue_depth", "Requests ready in a served request queue.", labels=["queue"]
        )
        for queue, messages in sorted(self.depths.items()):
            depth.add_metric([queue], messages)
        yield depth


def serve_metrics(namespaces: Sequence[str]) -> Route:
    """Metrics for the routers of ``namespaces`` (a ``Metrics`` middleware added to each), and
    the ``/metrics`` route that shows them."""
    metrics = Metrics()
    state = ServerState(namespaces)
    metrics.registry.register(state)
    for name in namespaces:
        get_router(name).add_middleware(metrics)

    async def route() -> Answer:
        await state.refresh()
        return 200, CONTENT_TYPE_LATEST, metrics.exposition()

    return route
