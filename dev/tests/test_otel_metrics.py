"""``atasks.otel_metrics``: OpenTelemetry metrics whose values match the calls made, read with
the SDK's InMemoryMetricReader, over loopback and each broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import atasks
from atasks import Router, atask
from atasks.otel_metrics import OtelMetrics

pytestmark = pytest.mark.timeout(90)

gates: list[asyncio.Event] = []  # served in this process: the events themselves, not copies


@atask
async def otel_measured(fail: bool = False) -> str:
    if fail:
        raise ValueError("no")
    return "yes"


@atask
async def otel_gated() -> None:
    gates[0].set()
    await gates[1].wait()


def points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    """Instrument name → its data points."""
    found: dict[str, list[Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                found.setdefault(metric.name, []).extend(metric.data.data_points)
    return found


def value(found: dict[str, list[Any]], name: str, **attributes: str) -> float:
    return sum(
        p.value
        for p in found.get(name, [])
        if all(p.attributes.get(k) == v for k, v in attributes.items())
    )


async def test_values_match_the_calls_made(served_serially: Router) -> None:
    reader = InMemoryMetricReader()
    served_serially.add_middleware(OtelMetrics(MeterProvider(metric_readers=[reader])))
    for _ in range(3):
        assert await otel_measured() == "yes"
    with pytest.raises(ValueError, match="no"):
        await otel_measured(fail=True)
    gates[:] = [asyncio.Event(), asyncio.Event()]
    holding = asyncio.ensure_future(otel_gated())
    async with asyncio.timeout(20):
        await gates[0].wait()
    assert value(points(reader), "atasks.running", atask=otel_gated.name) == 1
    gates[1].set()
    await holding

    found = points(reader)
    name = otel_measured.name
    assert value(found, "atasks.calls", atask=name, outcome="succeeded") == 3
    assert value(found, "atasks.calls", atask=name, outcome="failed") == 1
    assert value(found, "atasks.calls", atask=otel_gated.name, outcome="succeeded") == 1
    durations = [p for p in found["atasks.call.duration"] if p.attributes["atask"] == name]
    assert sum(p.count for p in durations) == 4
    assert value(found, "atasks.running", atask=name) == 0
    assert value(found, "atasks.running", atask=otel_gated.name) == 0
    assert value(found, "atasks.waiting") == 0


async def test_calls_waiting_for_a_slot() -> None:
    """In one process a call beyond the concurrency waits for a slot (over a broker it would
    wait in the queue instead): ``atasks.waiting`` counts it, and the call it waits behind."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    await atasks.setup(serve=True, concurrency=1, middleware=[OtelMetrics(provider)])
    gates[:] = [asyncio.Event(), asyncio.Event()]
    holding = asyncio.ensure_future(otel_gated())
    async with asyncio.timeout(20):
        await gates[0].wait()  # it holds the one slot
    behind = asyncio.ensure_future(otel_measured())
    async with asyncio.timeout(20):
        while value(points(reader), "atasks.waiting") < 1:  # until the server has it
            await asyncio.sleep(0.01)
    assert value(points(reader), "atasks.running", atask=otel_gated.name) == 1
    gates[1].set()
    await holding
    assert await behind == "yes"
    found = points(reader)
    assert value(found, "atasks.waiting") == 0
    assert value(found, "atasks.calls", atask=otel_measured.name, outcome="succeeded") == 1
