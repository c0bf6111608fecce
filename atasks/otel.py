"""Spans of atask calls with OpenTelemetry's API. Imported only when tracing is in use (see
``atasks.tracing``): importing this module imports OpenTelemetry.

The caller's span (kind CLIENT) covers the whole ``await``: encoding, the trip, the reply; the
server's (kind SERVER) covers checking, decoding, running and encoding, and is the current span
while the atask runs, so the atasks it awaits are its children. Attributes follow OpenTelemetry's
messaging conventions: ``messaging.system`` (``rabbitmq``, or ``atasks`` in process),
``messaging.destination.name`` (the request queue), ``messaging.operation.type`` (``send`` on
the caller, ``process`` on the server), ``messaging.message.id`` (the call id); errors are
recorded as exceptions with ``error.type`` and an ERROR status.
"""

from __future__ import annotations

import asyncio
from importlib import metadata
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from atasks.errors import type_name

if TYPE_CHECKING:
    from atasks.transport.contract import Transport
    from atasks.transport.messages import Request

STATUS_LIMIT = 200  # characters of an exception's message in a span's status


def configured_provider() -> trace.TracerProvider | None:
    """The global tracer provider, if the application has set one."""
    provider = trace.get_tracer_provider()
    return None if isinstance(provider, trace.ProxyTracerProvider) else provider


def _version() -> str | None:
    try:
        return metadata.version("atasks")
    except metadata.PackageNotFoundError:
        return None


class Tracing:
    """Makes the spans of calls with one tracer provider (``None``: the global one)."""

    def __init__(self, provider: trace.TracerProvider | None) -> None:
        self.tracer = trace.get_tracer("atasks", _version(), tracer_provider=provider)

    def client(
        self,
        transport: Transport,
        namespace: str,
        name: str,
        call_id: str,
        parent_id: str | None,
    ) -> Span:
        """Start the caller's span of a call (not made current: nothing runs under it here)."""
        return self.tracer.start_span(
            f"call {name}",
            kind=SpanKind.CLIENT,
            attributes=_attributes(transport, namespace, name, call_id, parent_id, "send"),
        )

    @staticmethod
    def failed(span: Span, exc: BaseException) -> None:
        """Record ``exc`` as the outcome of ``span``."""
        failed(span, exc)

    def inject(self, span: Span, headers: dict[str, str]) -> None:
        """Write ``span``'s context into a call's ``headers`` (``traceparent``…)."""
        propagate.inject(headers, context=trace.set_span_in_context(span))

    def server(self, transport: Transport | None, namespace: str, request: Request) -> Served:
        """Start the server's span of a call, a child of the caller's span if the request
        names one (a new trace otherwise), and make it current."""
        parent = propagate.extract(request.headers, context=otel_context.Context())
        span = self.tracer.start_span(
            f"process {request.name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes=_attributes(
                transport, namespace, request.name, request.call_id, request.parent_id, "process"
            ),
        )
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        return Served(span, token)


class Served:
    """A server span made current, until ``end()``."""

    __slots__ = ("span", "token")

    def __init__(self, span: Span, token: object) -> None:
        self.span = span
        self.token = token

    def failed(self, exc: BaseException) -> None:
        failed(self.span, exc)

    def retrying(self, attempt: int, delay: float, exc: BaseException) -> None:
        """An attempt failed and the call goes on with ``attempt`` after ``delay`` seconds."""
        self.span.add_event(
            "atasks.retry",
            {
                "atasks.attempt": attempt,
                "atasks.retry.delay": delay,
                "exception.type": type_name(exc),
                "exception.message": str(exc),
            },
        )

    def end(self) -> None:
        otel_context.detach(self.token)  # type: ignore[arg-type]
        self.span.end()


def failed(span: Span, exc: BaseException) -> None:
    """Record ``exc`` as the outcome of ``span``."""
    if isinstance(exc, asyncio.CancelledError):
        span.set_attribute("error.type", "cancelled")
        span.set_status(Status(StatusCode.ERROR, "cancelled"))
        return
    span.record_exception(exc)
    span.set_attribute("error.type", type_name(exc))
    try:
        text = f"{type(exc).__name__}: {exc}"
    except Exception:  # a broken __str__
        text = type(exc).__name__
    span.set_status(Status(StatusCode.ERROR, text[:STATUS_LIMIT]))


def _attributes(
    transport: Transport | None,
    namespace: str,
    name: str,
    call_id: str,
    parent_id: str | None,
    operation: str,
) -> dict[str, Any]:
    system = transport.messaging_system if transport is not None else "atasks"
    destination = transport.destination(name) if transport is not None else name
    attributes: dict[str, Any] = {
        "messaging.system": system,
        "messaging.operation.type": operation,
        "messaging.operation.name": "call" if operation == "send" else operation,
        "messaging.destination.name": destination,
        "messaging.message.id": call_id,
        "atasks.namespace": namespace,
        "atasks.atask": name,
    }
    if system == "rabbitmq":
        attributes["messaging.rabbitmq.destination.routing_key"] = destination
    if parent_id is not None:
        attributes["atasks.parent_id"] = parent_id
    return attributes
