"""Log records that say which call they belong to: atask name, call id, parent call id, trace id.

Add ``CallFilter`` to a handler (``install()`` does it for the root logger's handlers), or log
through ``CallAdapter(logger)``; then every record gets the attributes ``atask``, ``call_id``,
``parent_id`` and ``trace_id`` (empty strings where they do not apply) and ``call_context``,
all of them in brackets or nothing, for formats::

    logging.basicConfig(format=atasks.logging.FORMAT)
    atasks.logging.install()

Inside an atask, on its server, the ids are those of the call it runs; elsewhere they are empty.
The trace id is that of the current OpenTelemetry span where tracing is on, else the one the
call arrived with (its ``traceparent``), on the awaiting side too. ``atasks run -v`` logs in
this format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

from atasks.calls import current_scope
from atasks.tracing import OTEL_MODULE

FIELDS = ("atask", "call_id", "parent_id", "trace_id")
FORMAT = "%(asctime)s %(levelname)s %(name)s%(call_context)s: %(message)s"
"""``atasks run -v``'s format: ``... INFO app [resize call=… parent=… trace=…]: message``."""


def call_fields() -> dict[str, str]:
    """The ids of the call running here, as log record attributes."""
    scope = current_scope.get()
    trace_id = _trace_id(scope.headers if scope is not None else None)
    if scope is None:
        fields = {"atask": "", "call_id": "", "parent_id": "", "trace_id": trace_id}
    else:
        fields = {
            "atask": scope.name,
            "call_id": scope.call_id,
            "parent_id": scope.parent_id or "",
            "trace_id": trace_id,
        }
    fields["call_context"] = _bracket(fields)
    return fields


def _bracket(fields: dict[str, str]) -> str:
    parts = [fields["atask"]] if fields["atask"] else []
    for key, label in (("call_id", "call"), ("parent_id", "parent"), ("trace_id", "trace")):
        if fields[key]:
            parts.append(f"{label}={fields[key]}")
    return f" [{' '.join(parts)}]" if parts else ""


def _trace_id(headers: Any) -> str:
    if OTEL_MODULE in sys.modules:
        from opentelemetry import trace

        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            return f"{context.trace_id:032x}"
    if headers:
        parent = headers.get("traceparent", "")
        parts = parent.split("-")  # version-traceid-spanid-flags
        if len(parts) >= 4 and len(parts[1]) == 32 and parts[1] != "0" * 32:
            return str(parts[1])
    return ""


class CallFilter(logging.Filter):
    """Adds the call's ids to every record it sees (and never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in call_fields().items():
            setattr(record, key, value)
        return True


class CallAdapter(logging.LoggerAdapter[logging.Logger]):
    """A logger whose records carry the call's ids (as ``extra``)."""

    def process(
        self, msg: Any, kwargs: MutableMapping[str, Any]
    ) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**call_fields(), **(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def install(handlers: list[logging.Handler] | None = None) -> None:
    """Add a ``CallFilter`` to ``handlers`` (default: the root logger's), once each."""
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, CallFilter) for f in handler.filters):
            handler.addFilter(CallFilter())
