"""``atasks.logging``: records logged inside an atask name its atask, call, parent call and trace,
on both sides; ``atasks run -v`` shows them."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import workload
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from servers import Servers, wait_until_served
from test_cli import atasks_run

import atasks
from atasks import atask
from atasks.codecs.base import encode
from atasks.logging import CallAdapter, CallFilter
from atasks.router import Router
from atasks.transport.base import Request

log = logging.getLogger("test_logging")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(CallFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def fields(self) -> list[dict[str, str]]:
        names = ("atask", "call_id", "parent_id", "trace_id", "call_context")
        return [{name: getattr(record, name) for name in names} for record in self.records]


@pytest.fixture
def kept() -> Iterator[Kept]:
    handler = Kept()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)


@atask
async def inner_logs() -> str | None:
    log.info("inner")
    return atasks.current_call_id()


@atask
async def outer_logs() -> list[str | None]:
    log.info("outer")
    return [atasks.current_call_id(), await inner_logs()]


async def test_records_inside_atasks_name_their_call_and_parent(served: Router, kept: Kept) -> None:
    log.info("outside")
    outer_id, inner_id = await outer_logs()
    assert outer_id
    assert inner_id
    outside, outer, inner = kept.fields()
    assert outside == {
        "atask": "",
        "call_id": "",
        "parent_id": "",
        "trace_id": "",
        "call_context": "",
    }
    assert outer == {
        "atask": outer_logs.name,
        "call_id": outer_id,
        "parent_id": "",
        "trace_id": "",
        "call_context": f" [{outer_logs.name} call={outer_id}]",
    }
    assert inner["atask"] == inner_logs.name
    assert (inner["call_id"], inner["parent_id"]) == (inner_id, outer_id)
    assert inner["call_context"] == f" [{inner_logs.name} call={inner_id} parent={outer_id}]"


async def test_the_trace_id_is_the_current_spans_on_both_sides(served: Router, kept: Kept) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    atasks.tracing.instrument(provider)
    try:
        with provider.get_tracer("test").start_as_current_span("request"):
            log.info("awaiting")
            await outer_logs()
    finally:
        atasks.tracing.uninstrument()
    (root,) = [span for span in exporter.get_finished_spans() if span.name == "request"]
    assert root.context is not None
    trace_id = f"{root.context.trace_id:032x}"
    assert [fields["trace_id"] for fields in kept.fields()] == [trace_id] * 3
    assert kept.fields()[0]["call_context"] == f" [trace={trace_id}]"


async def test_without_tracing_here_the_trace_id_is_the_one_the_call_came_with(
    served: Router, kept: Kept
) -> None:
    codec = atasks.get_codec()
    call_id = "from-a-traced-caller"
    request = Request(
        name=inner_logs.name,
        call_id=call_id,
        content_type=codec.content_type,
        body=await encode(codec, [[], {}, inner_logs.name, call_id]),
        headers={"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"},
    )
    assert (await served.handle(request)).ok
    (fields,) = kept.fields()
    assert fields["trace_id"] == TRACE


async def test_an_adapter_adds_the_same_fields(served: Router) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    adapted = logging.getLogger("test_logging.adapter")
    adapted.addHandler(handler)
    adapted.setLevel(logging.INFO)

    @atask(name="test_logging.adapted")
    async def adapted_call() -> str | None:
        CallAdapter(adapted, {"extra_field": 1}).info("inside")
        return atasks.current_call_id()

    try:
        call_id = await adapted_call()
    finally:
        adapted.removeHandler(handler)
    (record,) = records
    assert (record.atask, record.call_id, record.extra_field) == (  # type: ignore[attr-defined]
        "test_logging.adapted",
        call_id,
        1,
    )


def test_atasks_run_shows_them_with_verbose(tmp_path: Path) -> None:
    (tmp_path / "app.py").write_text(
        "import logging\n"
        "from atasks import atask\n"
        "log = logging.getLogger('app')\n"
        "@atask\n"
        "async def work():\n"
        "    log.warning('working')\n"
        "async def aiomain():\n"
        "    await work()\n"
    )
    verbose = atasks_run("app.py", "-v", cwd=tmp_path)
    assert verbose.returncode == 0, verbose.stderr
    (line,) = [line for line in verbose.stderr.splitlines() if "working" in line]
    assert " WARNING app [app.work call=" in line
    assert line.endswith("]: working")
    plain = atasks_run("app.py", cwd=tmp_path)
    (line,) = [line for line in plain.stderr.splitlines() if "working" in line]
    assert line.endswith(" WARNING app: working")


async def test_a_server_process_logs_the_call_and_the_callers_trace(
    servers: Servers, amqp_url: str
) -> None:
    servers.start()  # with -v
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    atasks.tracing.instrument(provider)
    try:
        call_id = await workload.log_line("hello")
    finally:
        atasks.tracing.uninstrument()
    (span,) = exporter.get_finished_spans()
    assert span.context is not None
    trace_id = f"{span.context.trace_id:032x}"
    (line,) = [line for line in servers.log(0).splitlines() if "logged hello" in line]
    assert f"INFO workload [{workload.log_line.name} call={call_id} trace={trace_id}]" in line
