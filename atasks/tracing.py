"""OpenTelemetry spans for atask calls — only where OpenTelemetry is installed and in use.

Automatic: once this process has imported OpenTelemetry's API and set a global tracer provider
(``trace.set_tracer_provider(...)``, or ``opentelemetry-instrument``), every call makes a
client span where it is awaited and a server span where it runs, joined by the W3C
``traceparent`` header that travels with the call; atasks awaited inside an atask are children
of its server span, so a tree of calls is one trace across processes. ``ATASKS_TRACING=off``
turns that off; ``instrument(tracer_provider)`` turns it on with a provider of your own (no
global needed), ``uninstrument()`` back to automatic.

Without OpenTelemetry installed — or installed but never imported — this module imports
nothing of it, and a call costs what it costs without tracing.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from atasks.otel import Tracing

OTEL_MODULE = "opentelemetry.trace"
"""Tracing can only be configured once the application has imported this."""

active: Tracing | None = None
"""The tracing in force, or ``None``: the router reads it on every call."""

_explicit = False
_auto_off: bool | None = None  # ATASKS_TRACING=off, read once
_provider_from_env: bool | None = None  # OpenTelemetry will make its provider, read once
_UNKNOWN = object()
PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"


def detect() -> Tracing | None:
    """Tracing, if OpenTelemetry has a tracer provider configured by now (automatic mode).

    The router calls this only while ``active`` is ``None`` and OpenTelemetry is imported,
    that is on every call of a process that imports OpenTelemetry without configuring it: the
    negative answer must be cheap (``get_tracer_provider()`` reads ``os.environ`` each time).
    """
    global active, _auto_off, _provider_from_env
    if _explicit:
        return active
    module = sys.modules.get(OTEL_MODULE)
    if module is None:
        return None
    if getattr(module, "_TRACER_PROVIDER", _UNKNOWN) is None:  # not set yet, by code…
        if _provider_from_env is None:
            _provider_from_env = PROVIDER_ENV in os.environ
        if not _provider_from_env:  # …nor to be made from the environment on first use
            return None
    if _auto_off is None:
        from atasks.settings import value

        _auto_off = value("tracing") == "off"
    if _auto_off:
        return None
    from atasks import otel

    provider = otel.configured_provider()
    if provider is not None:
        active = otel.Tracing(provider)
    return active


def instrument(tracer_provider: Any = None) -> None:
    """Trace every call from now on with ``tracer_provider`` (default: OpenTelemetry's global
    one, whenever it is set). Needs ``opentelemetry-api`` (``pip install atasks[otel]``)."""
    global active, _explicit
    try:
        from atasks import otel
    except ImportError as exc:
        raise ImportError(
            "atasks.tracing.instrument() needs OpenTelemetry: pip install 'atasks[otel]'"
        ) from exc
    active, _explicit = otel.Tracing(tracer_provider), True


def uninstrument() -> None:
    """Back to automatic: spans only when a global tracer provider is configured."""
    global active, _explicit, _auto_off
    active, _explicit, _auto_off = None, False, None


def current() -> Tracing | None:
    """The tracing in force for a call made now, or ``None``."""
    return active if active is not None else detect()
