"""OpenTelemetry spans of calls (``atasks.tracing``): a client span where an atask is awaited,
a server span, current while it runs, where it is served."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atasks.middleware import Call, Middleware, Proceed

if TYPE_CHECKING:
    from atasks.otel import Tracing
    from atasks.transport.contract import Transport
    from atasks.transport.messages import Request


class ClientSpans(Middleware):
    """Call side: the call's client span, whose context travels in ``traceparent``."""

    def __init__(self, tracing: Tracing) -> None:
        self.tracing = tracing

    async def call(self, call: Call, proceed: Proceed) -> Any:
        tracing = self.tracing
        span = tracing.client(
            call.transport, call.namespace, call.atask, call.call_id, call.parent_id
        )
        try:
            tracing.inject(span, call.headers)
            return await proceed(call)
        except BaseException as exc:
            tracing.failed(span, exc)
            raise
        finally:
            span.end()


class ServerSpans(Middleware):
    """Serve side: the call's server span, a child of its client span, current while it runs;
    retries show as its events."""

    def __init__(self, tracing: Tracing, transport: Transport | None) -> None:
        self.tracing = tracing
        self.transport = transport

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        served = call.span = self.tracing.server(self.transport, call.namespace, call.request)
        try:
            return await proceed(call)
        except BaseException as exc:
            served.failed(exc)
            raise
        finally:
            served.end()

    def refused(self, namespace: str, request: Request, exc: Exception) -> None:
        """A request refused before it ran still gets its span, failed."""
        served = self.tracing.server(self.transport, namespace, request)
        served.failed(exc)
        served.end()
