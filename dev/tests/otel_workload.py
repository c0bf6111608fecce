"""Atasks for the OpenTelemetry tests. A server running this file with ``ATASKS_TEST_OTEL=1``
sets a global tracer provider (so atasks traces automatically) that keeps its spans with the
SDK's in-memory exporter, and hands them over with ``finished_spans()``."""

from __future__ import annotations

import os
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan

from atasks import atask

_exporter: Any = None
if os.environ.get("ATASKS_TEST_OTEL"):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    _exporter = InMemorySpanExporter()
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(_exporter))
    trace.set_tracer_provider(_provider)


def describe(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as plain data."""
    assert span.context is not None
    return {
        "name": span.name,
        "kind": span.kind.name,
        "trace_id": f"{span.context.trace_id:032x}",
        "span_id": f"{span.context.span_id:016x}",
        "parent_id": f"{span.parent.span_id:016x}" if span.parent is not None else None,
        "attributes": dict(span.attributes or {}),
        "status": span.status.status_code.name,
        "events": [
            {"name": event.name, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
    }


@atask
async def outer(n: int) -> int:
    return await inner(n) + 1


@atask
async def inner(n: int) -> int:
    return 2 * n


@atask
async def failing(message: str) -> None:
    raise LookupError(message)


@atask
async def calls_failing(message: str) -> None:
    await failing(message)


@atask
async def finished_spans() -> list[dict[str, Any]]:
    """The spans this server has finished so far."""
    return [describe(span) for span in _exporter.get_finished_spans()]


@atask
async def ready() -> int:
    """Defined last: once it is served, so is every atask above."""
    return os.getpid()
