"""``atasks.metrics``: Prometheus metrics that match the calls made, in one process over loopback
and scraped from the ``/metrics`` endpoint of an ``atasks run --metrics-port`` server."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest
import workload
from servers import Servers, until, wait_until_served
from test_health import free_port, get

import atasks
from atasks import atask
from atasks.metrics import Metrics

pytestmark = pytest.mark.timeout(90)


@atask(namespace="metered")
async def metered(fail: bool = False) -> str:
    if fail:
        raise ValueError("no")
    return "yes"


started: list[asyncio.Event] = []  # the same process: arguments would travel as copies


@atask(namespace="metered")
async def hangs() -> None:
    started[0].set()
    await asyncio.Event().wait()


async def test_counts_match_the_calls_over_loopback() -> None:
    metrics = Metrics()
    await atasks.setup(namespace="metered", serve=True, middleware=[metrics])
    for _ in range(3):
        assert await metered() == "yes"
    with pytest.raises(ValueError, match="no"):
        await metered(fail=True)
    started[:] = [asyncio.Event()]
    task = asyncio.ensure_future(hangs())
    async with asyncio.timeout(10):
        await started[0].wait()
    value = metrics.registry.get_sample_value
    assert value("atasks_running", {"atask": hangs.name}) == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await atasks.close("metered")

    assert value("atasks_calls_total", {"atask": metered.name, "outcome": "succeeded"}) == 3
    assert value("atasks_calls_total", {"atask": metered.name, "outcome": "failed"}) == 1
    assert value("atasks_calls_total", {"atask": hangs.name, "outcome": "cancelled"}) == 1
    assert value("atasks_call_duration_seconds_count", {"atask": metered.name}) == 4
    assert value("atasks_running", {"atask": metered.name}) == 0
    assert value("atasks_running", {"atask": hangs.name}) == 0


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` → value, from Prometheus' text format."""
    found = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, number = line.rpartition(" ")
            found[key] = float(number)
    return found


async def test_a_served_metrics_endpoint(amqp_url: str, tmp_path: Path) -> None:
    servers = Servers(amqp_url, tmp_path)
    port = free_port()
    try:
        servers.start("--metrics-port", str(port))
        await atasks.setup("amqp", url=amqp_url)
        await wait_until_served(workload.ready)
        before = samples((await get(port, "/metrics"))[1])
        for _ in range(3):
            await workload.pid()
        with pytest.raises(LookupError):
            await workload.fail_with("metered")
        status, text = await get(port, "/metrics")
        assert status == 200
        after = samples(text)
        ok = f'atasks_calls_total{{atask="{workload.pid.name}",outcome="succeeded"}}'
        failed = f'atasks_calls_total{{atask="{workload.fail_with.name}",outcome="failed"}}'
        assert after[ok] - before.get(ok, 0) == 3
        assert after[failed] - before.get(failed, 0) == 1
        assert after["atasks_waiting"] == 0
        assert after[f'atasks_queue_depth{{queue="atasks.default.{workload.pid.name}"}}'] == 0
        assert f'atasks_call_duration_seconds_bucket{{atask="{workload.pid.name}"' in text
    finally:
        servers.stop_all()


def total(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels``."""
    found = 0.0
    for key, value in samples(text).items():
        metric, _, rest = key.partition("{")
        if metric == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            found += value
    return found


async def test_one_scrape_shows_every_worker(amqp_url: str, tmp_path: Path) -> None:
    """``--workers 2 --metrics-port``: the supervisor's endpoint adds up both workers' calls,
    and removes the workers' files when it stops."""
    servers = Servers(amqp_url, tmp_path)
    port = free_port()
    try:
        servers.start("--workers", "2", "--metrics-port", str(port))
        await until(lambda: servers.log(0).count("serving; SIGINT or SIGTERM stops") == 2, 60)
        await atasks.setup("amqp", url=amqp_url)
        pids = {await workload.pid()}
        made = 1
        async with asyncio.timeout(60):
            while len(pids) < 2:  # both workers consume the queue: soon each gets some
                pids.update(await asyncio.gather(*(workload.slow_pid(0.05) for _ in range(32))))
                made += 32
        text = (await get(port, "/metrics"))[1]
        succeeded = total(text, "atasks_calls_total", outcome="succeeded")
        assert succeeded == made
        assert total(text, "atasks_calls_total", atask=workload.slow_pid.name) == made - 1
        assert total(text, "atasks_call_duration_seconds_count") == made
        assert total(text, "atasks_running") == 0
        assert samples(text)["atasks_waiting"] == 0
        with pytest.raises(LookupError):
            await workload.fail_with("metered")
        text = (await get(port, "/metrics"))[1]
        assert total(text, "atasks_calls_total", outcome="failed") == 1
        assert total(text, "atasks_calls_total", outcome="succeeded") == made
        log = servers.log(0)
        folder = log.split("(their files in ")[1].split(")")[0]
        assert await asyncio.to_thread(Path(folder).is_dir)
        supervisor = servers.processes[0]
        supervisor.send_signal(signal.SIGTERM)
        await asyncio.to_thread(supervisor.wait, 60)
        assert not await asyncio.to_thread(Path(folder).exists)
    finally:
        servers.stop_all()


def test_durations_fall_in_the_buckets_prometheus_means() -> None:
    """A bucket ``le`` counts the calls that took at most ``le`` seconds, its smaller ones'
    included; ``+Inf`` all of them."""
    metrics = Metrics()
    meter = metrics.meter("a")
    for seconds in (0.005, 0.0051, 0.3, 11.0):
        meter.started()
        meter.finished("succeeded", seconds)
    value = metrics.registry.get_sample_value
    bucket = "atasks_call_duration_seconds_bucket"
    assert value(bucket, {"atask": "a", "le": "0.005"}) == 1
    assert value(bucket, {"atask": "a", "le": "0.01"}) == 2
    assert value(bucket, {"atask": "a", "le": "0.25"}) == 2
    assert value(bucket, {"atask": "a", "le": "0.5"}) == 3
    assert value(bucket, {"atask": "a", "le": "10.0"}) == 3
    assert value(bucket, {"atask": "a", "le": "+Inf"}) == 4
    assert value("atasks_call_duration_seconds_count", {"atask": "a"}) == 4
    assert value("atasks_call_duration_seconds_sum", {"atask": "a"}) == pytest.approx(11.3101)
    assert value("atasks_running", {"atask": "a"}) == 0
