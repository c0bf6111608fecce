"""The benchmark runs end to end (``dev/bench/bench.py --quick --json``), on each broker, and
reports every number it promises. Its numbers are never compared with any speed: only their
presence."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
from conftest import REPO, broker_root
from rabbitnode import RABBIT_BIN

pytestmark = [
    pytest.mark.timeout(600),
    pytest.mark.skipif(
        not (RABBIT_BIN / "rabbitmq-server").exists(), reason="needs Debian's rabbitmq-server"
    ),
]

SEQUENTIAL = ("calls", "p50_us", "p99_us", "mean_us", "seconds", "client_cpu_us_per_call")
THROUGHPUT = (
    "calls",
    "calls_per_s",
    "seconds",
    "client_cpu_us_per_call",
    "server_cpu_us_per_call",
    "broker_cpu_us_per_call",
)
RATIOS = ("p50", "p99", "throughput", "client_cpu_per_call", "server_cpu_per_call")


def positive(section: dict[str, Any], keys: tuple[str, ...]) -> None:
    for key in keys:
        value = section[key]
        assert isinstance(value, int | float), (key, value)
        assert value > 0, (key, value)


@pytest.fixture(scope="module")
def report(broker: str) -> dict[str, Any]:
    broker_root(broker)  # fails, saying how to build it, if the broker's root is missing
    done = subprocess.run(
        [
            sys.executable,
            "dev/bench/bench.py",
            "--quick",
            "--json",
            "--broker",
            broker.removeprefix("rabbitmq"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_both_sides_are_measured(report: dict[str, Any]) -> None:
    for side in ("atasks", "baseline"):
        positive(report[side]["sequential"], SEQUENTIAL)
        positive(report[side]["throughput"], THROUGHPUT)
        seq = report[side]["sequential"]
        assert seq["p99_us"] >= seq["p50_us"]


def test_ratios(report: dict[str, Any]) -> None:
    positive(report["ratios"], RATIOS)


def test_workers(report: dict[str, Any]) -> None:
    assert set(report["workers"]) == {"1", "2", "4"}
    for result in report["workers"].values():
        positive(result, THROUGHPUT)


def test_loopback_and_events(report: dict[str, Any]) -> None:
    positive(report["loopback"], ("loopback_us_per_call", "direct_us_per_call"))
    assert isinstance(report["loopback"]["overhead_us_per_call"], float)
    events = report["events"]
    assert events["skipped"] is True or "throughput" in events
    assert report["environment"]["cpus"] >= 1


def test_context_costs_are_measured_against_none(report: dict[str, Any]) -> None:
    context = report["context"]
    modes = ("off", "contextvar", "auth") + (() if context["otel_skipped"] else ("otel",))
    positive(context, tuple(f"{mode}_us_per_call" for mode in modes))
    for mode in modes[1:]:
        assert isinstance(context[f"{mode}_cost_us_per_call"], float)


def test_the_broker_is_the_one_asked_for(report: dict[str, Any], broker: str) -> None:
    assert report["environment"]["rabbitmq"].startswith(f"{broker.removeprefix('rabbitmq')}.")


def test_fire_and_forget_is_measured_against_its_baseline(report: dict[str, Any]) -> None:
    positive(
        report["fire_and_forget"],
        ("calls", "atasks_publishes_per_s", "baseline_publishes_per_s", "ratio"),
    )
