"""OpenTelemetry: a client span where a call is awaited, a server span where it runs, joined by
``traceparent``; a tree of calls is one trace, across processes; errors are recorded. Spans are
collected with the SDK's in-memory exporter, in this process and in a server process. Without
OpenTelemetry nothing is imported."""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import otel_workload
import pytest
from conftest import REPO
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from otel_workload import describe
from servers import Servers, delete_queues, wait_until_served

import atasks
from atasks import atask
from atasks.codecs.base import encode
from atasks.router import Router
from atasks.transport.base import Request

Span = dict[str, Any]
OUTER, INNER = otel_workload.outer.name, otel_workload.inner.name
CALLS_FAILING, FAILING = otel_workload.calls_failing.name, otel_workload.failing.name


@dataclass
class Traced:
    provider: TracerProvider
    exporter: InMemorySpanExporter

    def spans(self) -> list[Span]:
        return [describe(span) for span in self.exporter.get_finished_spans()]


@pytest.fixture
def traced() -> Iterator[Traced]:
    """Tracing on, with a provider of this test's own (no global one)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    atasks.tracing.instrument(provider)
    yield Traced(provider, exporter)
    atasks.tracing.uninstrument()


@atask
async def never_ends(started: str) -> None:
    await asyncio.Event().wait()


def one(spans: list[Span], name: str) -> Span:
    found = [span for span in spans if span["name"] == name]
    assert len(found) == 1, (name, [span["name"] for span in spans])
    return found[0]


def check_call_tree(spans: list[Span], root: Span, system: str) -> None:
    """root → call outer → process outer → call inner → process inner, one trace."""
    call_outer, process_outer = one(spans, f"call {OUTER}"), one(spans, f"process {OUTER}")
    call_inner, process_inner = one(spans, f"call {INNER}"), one(spans, f"process {INNER}")
    chain = [root, call_outer, process_outer, call_inner, process_inner]
    for parent, child in itertools.pairwise(chain):
        assert child["parent_id"] == parent["span_id"], (parent["name"], child["name"])
        assert child["trace_id"] == root["trace_id"]
    assert [span["kind"] for span in chain[1:]] == ["CLIENT", "SERVER"] * 2
    for span in chain[1:]:
        attributes = span["attributes"]
        assert attributes["messaging.system"] == system
        name = span["name"].split()[1]
        assert attributes["atasks.atask"] == name
        queue = f"atasks.default.{name}" if system == "rabbitmq" else name
        assert attributes["messaging.destination.name"] == queue
        assert attributes["messaging.operation.type"] == (
            "send" if span["kind"] == "CLIENT" else "process"
        )
        assert span["status"] == "UNSET"
    for client, server in ((call_outer, process_outer), (call_inner, process_inner)):
        call_id = client["attributes"]["messaging.message.id"]
        assert server["attributes"]["messaging.message.id"] == call_id
    outer_id = process_outer["attributes"]["messaging.message.id"]
    assert process_inner["attributes"]["atasks.parent_id"] == outer_id
    assert call_inner["attributes"]["atasks.parent_id"] == outer_id


def check_failure_recorded(span: Span) -> None:
    assert span["status"] == "ERROR"
    assert span["attributes"]["error.type"] == "builtins.LookupError"
    (event,) = [event for event in span["events"] if event["name"] == "exception"]
    assert event["attributes"]["exception.type"] in ("LookupError", "builtins.LookupError")
    assert "no such thing" in event["attributes"]["exception.message"]


async def test_a_tree_of_calls_is_one_trace(served: Router, traced: Traced) -> None:
    system = "atasks" if served.transport.in_process else "rabbitmq"
    with traced.provider.get_tracer("test").start_as_current_span("request"):
        assert await otel_workload.outer(3) == 7
    spans = traced.spans()
    check_call_tree(spans, one(spans, "request"), system)


async def test_errors_are_recorded_on_both_sides(served: Router, traced: Traced) -> None:
    with pytest.raises(LookupError, match="no such thing"):
        await otel_workload.calls_failing("no such thing")
    spans = traced.spans()
    for name in (CALLS_FAILING, FAILING):
        check_failure_recorded(one(spans, f"call {name}"))
        check_failure_recorded(one(spans, f"process {name}"))


_attempts: list[int] = []


@atask(retry=atasks.Retry(attempts=3, backoff=atasks.Backoff.constant(0)))
async def flaky_for_spans() -> int:
    _attempts.append(1)
    if len(_attempts) < 3:
        raise ConnectionError(f"attempt {len(_attempts)} failed")
    return len(_attempts)


async def test_retries_are_recorded_on_the_server_span(served: Router, traced: Traced) -> None:
    _attempts.clear()
    assert await flaky_for_spans() == 3
    process = one(traced.spans(), f"process {flaky_for_spans.name}")
    retries = [event for event in process["events"] if event["name"] == "atasks.retry"]
    assert [event["attributes"]["atasks.attempt"] for event in retries] == [2, 3]
    assert retries[0]["attributes"]["exception.message"] == "attempt 1 failed"
    assert process["status"] == "UNSET"  # it succeeded in the end


async def test_a_call_cut_by_its_deadline_is_recorded(served: Router, traced: Traced) -> None:
    with pytest.raises(TimeoutError):
        async with atasks.deadline(0.2):
            await never_ends("x")
    spans = traced.spans()
    client = one(spans, f"call {never_ends.name}")
    assert client["attributes"]["error.type"] == "builtins.TimeoutError"
    assert client["status"] == "ERROR"


async def test_a_request_without_trace_context_starts_a_new_trace(
    served: Router, traced: Traced
) -> None:
    codec = atasks.get_codec()
    request = Request(
        name=otel_workload.outer.name,
        call_id="no-trace-context",
        content_type=codec.content_type,
        body=await encode(codec, [[1], {}, otel_workload.outer.name, "no-trace-context"]),
    )
    reply = await served.handle(request)
    assert reply.ok
    spans = traced.spans()
    server = one(spans, f"process {OUTER}")
    assert server["parent_id"] is None
    assert one(spans, f"process {INNER}")["trace_id"] == server["trace_id"]


@pytest.mark.timeout(120)
async def test_one_trace_across_a_server_process(
    servers: Servers, amqp_url: str, traced: Traced
) -> None:
    servers.start(workload="dev/tests/otel_workload.py", env={"ATASKS_TEST_OTEL": "1"})
    try:
        await atasks.setup("amqp", url=amqp_url)
        await wait_until_served(otel_workload.ready)
        with traced.provider.get_tracer("test").start_as_current_span("request"):
            assert await otel_workload.outer(3) == 7
            with pytest.raises(LookupError):
                await otel_workload.calls_failing("no such thing")
        local = traced.spans()
        remote = await otel_workload.finished_spans()
        root = one(local, "request")
        mine = [span for span in local + remote if span["trace_id"] == root["trace_id"]]
        check_call_tree(mine, root, "rabbitmq")
        assert {span["name"] for span in remote} >= {f"process {OUTER}", f"call {INNER}"}
        assert {span["name"] for span in local} >= {f"call {OUTER}"}
        for name in (f"call {CALLS_FAILING}", f"process {CALLS_FAILING}", f"process {FAILING}"):
            check_failure_recorded(one(mine, name))
    finally:
        await delete_queues(amqp_url, otel_workload)


def python(code: str, env: dict[str, str] | None = None) -> str:
    import os

    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**{k: v for k, v in os.environ.items() if not k.startswith("ATASKS_")}, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


CALL = """
import asyncio, sys
import atasks

@atasks.atask
async def double(x):
    return 2 * x

async def main():
    await atasks.setup()
    assert await double(4) == 8
    await atasks.close()
"""


def test_without_opentelemetry_nothing_of_it_is_imported() -> None:
    code = CALL + (
        "asyncio.run(main())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    assert python(code) == "[]"


def test_without_the_package_calls_work_and_instrument_says_what_to_install() -> None:
    blocker = (
        "import importlib.abc, sys\n"
        "class NoOtel(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'opentelemetry':\n"
        "            raise ImportError('not installed: ' + name)\n"
        "sys.meta_path.insert(0, NoOtel())\n"
    )
    code = (
        blocker
        + CALL
        + (
            "asyncio.run(main())\n"
            "try:\n"
            "    atasks.tracing.instrument()\n"
            "except ImportError as exc:\n"
            "    print(exc)\n"
        )
    )
    assert "pip install 'atasks[otel]'" in python(code)


AUTOMATIC = """
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

exporter = InMemorySpanExporter()
asyncio.run(main())  # before any provider: no spans
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
asyncio.run(main())
print(sorted(span.name for span in exporter.get_finished_spans()))
"""


FROM_ENVIRONMENT = """
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

asyncio.run(main())  # OpenTelemetry makes its provider from the environment on first use
print(atasks.tracing.active is not None)
exporter = InMemorySpanExporter()
trace.get_tracer_provider().add_span_processor(SimpleSpanProcessor(exporter))
asyncio.run(main())
print(sorted(span.name for span in exporter.get_finished_spans()))
"""


def test_a_tracer_provider_named_in_the_environment_turns_tracing_on() -> None:
    output = python(
        "import opentelemetry.trace\n" + CALL + FROM_ENVIRONMENT,
        env={"OTEL_PYTHON_TRACER_PROVIDER": "sdk_tracer_provider"},
    )
    assert output.splitlines() == ["True", "['call __main__.double', 'process __main__.double']"]


def test_a_global_tracer_provider_turns_tracing_on_unless_atasks_tracing_is_off() -> None:
    assert python(CALL + AUTOMATIC) == "['call __main__.double', 'process __main__.double']"
    assert python(CALL + AUTOMATIC, env={"ATASKS_TRACING": "off"}) == "[]"
