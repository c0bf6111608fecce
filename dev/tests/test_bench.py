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

from atasks.testing.rabbitnode import RABBIT_BIN

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
        # CPU time comes in clock ticks (10 ms): a quick run may see none of a process that
        # had little to do (a broker handed a few batches of calls).
        assert value >= 0 if key.endswith("cpu_us_per_call") else value > 0, (key, value)


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


def test_streams_are_measured_against_plain_calls(report: dict[str, Any]) -> None:
    streams = report["streams"]
    positive(streams, ("items", "calls_per_s"))
    for window in (16, 64, 256):
        measured = streams[f"window_{window}"]
        positive(measured, ("items_per_s",))
        for side in ("client", "server", "broker"):  # under a clock tick per item: maybe 0
            assert measured[f"{side}_cpu_us_per_item"] >= 0


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


@pytest.fixture(scope="module")
def scaling(broker: str) -> dict[str, Any]:
    """The scaling phase alone, at its quick sizes."""
    broker_root(broker)
    done = subprocess.run(
        [
            sys.executable,
            "dev/bench/bench.py",
            "--scaling",
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
    result: dict[str, Any] = json.loads(done.stdout)["scaling"]
    return result


SCALED = (*THROUGHPUT, "mb_per_s", "total_cpu_us_per_call")


def test_scaling_compares_both_sides_at_every_load(scaling: dict[str, Any]) -> None:
    levels = {"1": 1, "8": 8, "64": 64, "512": 512, "4096": 4_096}
    assert set(scaling["inflight"]) == set(levels)
    for level, measured in scaling["inflight"].items():
        for side in ("atasks", "baseline"):
            positive(measured[side], SCALED)
            assert measured[side]["inflight"] == levels[level]
            assert measured[side]["calls"] >= 2 * levels[level]
        positive(measured, ("ratio_throughput", "ratio_total_cpu_per_call"))


def test_scaling_payloads_reach_16_mb(scaling: dict[str, Any]) -> None:
    sizes = {"100": 100, "10000": 10_000, "1000000": 1_000_000, "16000000": 16_000_000}
    assert set(scaling["payloads"]) == set(sizes)
    for size, measured in scaling["payloads"].items():
        for side in ("atasks", "baseline"):
            positive(measured[side], SCALED)
            assert measured[side]["payload_bytes"] == sizes[size]
        positive(measured, ("ratio_mb_per_s",))


def test_scaling_memory_per_call_in_flight(scaling: dict[str, Any]) -> None:
    memory = scaling["memory"]
    assert memory["inflight"] == 4_096
    for side in ("atasks", "baseline"):
        positive(memory[side], ("client_heap_kb_per_inflight",))  # 4,096 futures at least
        for key in ("server_rss_growth_kb", "server_rss_kb_per_inflight"):  # may stay flat
            assert memory[side][key] >= 0


def test_scaling_server_processes_and_uvloop(scaling: dict[str, Any]) -> None:
    assert set(scaling["workers"]) == {"1", "2", "4"}
    for measured in scaling["workers"].values():
        for side in ("atasks", "baseline"):
            positive(measured[side], THROUGHPUT)
        positive(measured, ("ratio_throughput",))
    uv = scaling["uvloop"]  # the test extra installs uvloop: measured, not skipped
    assert not uv["skipped"], uv.get("note")
    for loop in ("asyncio", "uvloop"):
        positive(uv[loop], THROUGHPUT)
    positive(uv, ("ratio_throughput",))


@pytest.fixture(scope="module")
def targets(broker: str) -> dict[str, Any]:
    """dev/bench/targets.py at its quick sizes: atasks against both baselines."""
    broker_root(broker)
    done = subprocess.run(
        [sys.executable, "dev/bench/targets.py", "--quick", "--json", "--broker", broker[-1]],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=540,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def test_targets_against_both_baselines(targets: dict[str, Any]) -> None:
    for theirs in ("baseline", "patterns"):
        positive(targets[theirs], ("p50", "one_in_flight", "64_in_flight"))
    positive(targets, ("cpu_us_per_call_512", "loopback_us_per_call"))
    raw = targets["raw"]
    assert set(raw["sequential"]) == set(raw["one"]) == {"baseline", "patterns", "atasks"}
    assert targets["environment"]["replies"] == "direct"  # the default


def test_the_memories_benchmark_times_each_memory_in_every_slice() -> None:
    """dev/bench/memories.py, tiny: a number for each slice of puts of each memory."""
    done = subprocess.run(
        [sys.executable, "dev/bench/memories.py", "--puts", "600", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-5000:]
    result = json.loads(done.stdout)
    assert set(result) == {"Sent.put", "Memory.put"}
    for timings in result.values():
        assert len(timings) == 6
        assert all(timing > 0 for timing in timings)
