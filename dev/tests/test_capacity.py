"""A server's capacity: slots lent only while an atask waits on its own calls, consumers that
follow the free slots (RabbitMQ 4.3 has no global QoS), and busy servers that never sit on
requests an idle server could run."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import workload
from servers import Servers, wait_for_consumers, wait_until_served

import atasks
from atasks import atask
from atasks.router import Router
from atasks.transport.backends.amqp.intake import MAX_PREFETCH, Intake


@dataclass
class Scene:
    order: list[str] = field(default_factory=list)
    other_started: asyncio.Event = field(default_factory=asyncio.Event)


SCENE = Scene()


@atask(name="capacity.child")
async def child() -> int:
    return 1


@atask(name="capacity.parent")
async def parent() -> int:
    spawned = asyncio.create_task(child())
    await SCENE.other_started.wait()  # suspended with a call in flight: its slot is lent
    SCENE.order.append("parent goes on")
    return await spawned


@atask(name="capacity.other")
async def other() -> None:
    SCENE.order.append("other starts")
    SCENE.other_started.set()
    await asyncio.sleep(0.2)  # work that holds the slot
    SCENE.order.append("other ends")


async def test_an_atask_never_goes_on_without_a_slot(served_serially: Router) -> None:
    """Concurrency 1: a parent whose create_task child lent its slot away waits for the slot
    before its own code goes on, instead of running beside another atask."""
    global SCENE
    SCENE = Scene()
    started = asyncio.ensure_future(parent())
    async with asyncio.timeout(30):
        await other()
        assert await started == 1
    assert SCENE.order == ["other starts", "other ends", "parent goes on"]
    statistics = served_serially.statistics()
    assert (statistics.running, statistics.parked) == (0, 0)


async def test_nested_fan_out_at_concurrency_1(served_serially: Router) -> None:
    async with asyncio.timeout(60):
        assert await workload.fanout(6, 3) == 2**4 - 1 + 2**3 * 3


@pytest.mark.parametrize(
    ("prefetch", "live", "free", "expected"),
    [
        (4, 4, 0, None),  # busy and no credit: nothing to do
        (4, 4, 2, 2),  # every delivery parked on children, slots free: new consumer
        (4, 1, 3, None),  # credit matches the free slots
        (4, 3, 4, 4),  # credit far below the free slots: grow
        (64, 0, 100_000, MAX_PREFETCH),  # never over AMQP's 16-bit prefetch
    ],
)
def test_intake_plan(prefetch: int, live: int, free: int, expected: int | None) -> None:
    intake = Intake("q", tag="t1", prefetch=prefetch, live={"t1": live} if live else {})
    assert intake.plan(free) == expected


def test_intake_paused_resumes_when_a_slot_frees() -> None:
    intake = Intake("q", tag="t1", prefetch=2)
    intake.delivered("t1")
    intake.pause()
    assert intake.stale == ["t1"]
    assert intake.plan(0) is None
    assert intake.plan(1) == 1
    intake.replaced("t2", 1)
    intake.delivered("t2")  # a delivery of the new consumer
    intake.handled("t1")  # one of the old one's, finished late
    assert intake.credit == 0
    assert intake.live == {"t2": 1}


async def test_a_busy_server_does_not_sit_on_requests(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    """Server A runs one long call at concurrency 1; every short call goes to idle server B."""
    await atasks.setup("amqp", url=amqp_url)
    busy = servers.start("--concurrency", "1")
    await wait_until_served(workload.ready)
    marker = tmp_path / "long"
    long_call = asyncio.ensure_future(workload.mark_then_sleep(str(marker), 15.0))
    async with asyncio.timeout(30):
        while not marker.exists() or not marker.read_text():
            await asyncio.sleep(0.02)
    assert int(marker.read_text()) == busy.pid
    idle = servers.start("--concurrency", "4")
    await wait_for_consumers(amqp_url, "atasks.default.workload.slow_pid", 2)
    async with asyncio.timeout(10):  # far less than the long call's 15 s
        pids = await asyncio.gather(*(workload.slow_pid(0.05) for _ in range(12)))
    assert set(pids) == {idle.pid}
    assert not long_call.done()
    busy.send_signal(signal.SIGTERM)  # the long call goes back to the queue, then to B
    assert await asyncio.wait_for(long_call, 60) == idle.pid
