"""OpenTelemetry metrics of a server (``pip install atasks[otel]``): the instruments of the
Prometheus middleware (``atasks.metrics``), measured by the same code (``atasks.measuring``),
through OpenTelemetry's metrics API, to whatever the application's meter provider exports.

- ``atasks.calls`` (counter, ``{call}``): calls served, attributes ``atask`` and ``outcome``
  (succeeded, failed, cancelled; a call retried counts once, with its last outcome);
- ``atasks.call.duration`` (histogram, ``s``): how long each took, retries and waits included;
- ``atasks.running`` (up-down counter, ``{call}``): calls in progress, attribute ``atask``;
- ``atasks.waiting`` (observable gauge, ``{call}``): calls waiting for a slot, read when the
  provider collects.

Add it to a router (``router.add_middleware(OtelMetrics())``) or ``atasks.setup(middleware=
[OtelMetrics()])``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import metadata

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation

from atasks.measuring import OUTCOMES, Measuring, waiting


def _version() -> str:
    try:
        return metadata.version("atasks")
    except metadata.PackageNotFoundError:
        return ""


class OtelMetrics(Measuring):
    """Measures the calls a server serves with a meter of ``provider`` (``None``: the global
    one). ``namespaces``: whose calls waiting for a slot ``atasks.waiting`` counts (``None``:
    every namespace of this process)."""

    def __init__(
        self, provider: MeterProvider | None = None, namespaces: Sequence[str] | None = None
    ) -> None:
        super().__init__()
        meter = metrics.get_meter("atasks", _version(), meter_provider=provider)
        self.calls = meter.create_counter("atasks.calls", "{call}", "Calls served.")
        self.duration = meter.create_histogram(
            "atasks.call.duration", "s", "How long calls took to serve, retries included."
        )
        self.running = meter.create_up_down_counter(
            "atasks.running", "{call}", "Calls in progress on this server."
        )
        self.namespaces = None if namespaces is None else list(namespaces)
        meter.create_observable_gauge(
            "atasks.waiting", [self._waiting], "{call}", "Calls waiting for a slot."
        )

    def _waiting(self, options: CallbackOptions) -> Iterable[Observation]:
        yield Observation(waiting(self.namespaces))

    def meter(self, atask: str) -> _AtaskMeter:
        return _AtaskMeter(self, atask)


class _AtaskMeter:
    """The instruments of one atask, with their attributes made once."""

    __slots__ = ("atask", "metrics", "outcomes")

    def __init__(self, metrics: OtelMetrics, atask: str) -> None:
        self.metrics = metrics
        self.atask = {"atask": atask}
        self.outcomes = {outcome: {"atask": atask, "outcome": outcome} for outcome in OUTCOMES}

    def started(self) -> None:
        self.metrics.running.add(1, self.atask)

    def finished(self, outcome: str, seconds: float) -> None:
        self.metrics.running.add(-1, self.atask)
        self.metrics.duration.record(seconds, self.atask)
        self.metrics.calls.add(1, self.outcomes[outcome])
