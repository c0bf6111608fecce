"""Schedules fired exactly once: in one loopback process, and by three ``atasks run`` servers on
a real broker, one of which holds the scheduler role — and is killed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from proxy import Proxy
from servers import REPO, Servers, until, watch_events

import atasks
from atasks import Event, schedule
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.dead import DeadLetter, list_dead_letters
from atasks.transport.backends.amqp.monitor import inspect_servers
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.base import LoopbackTransport

WORKLOAD = "dev/tests/schedule_workload.py"
# Not imported here: its schedule would be this process's too, and every router these tests
# serve in the default namespace would compete for the scheduler role and fire it.
TICK = "schedule_workload.tick"  # the atask of schedule "tick", as `atasks run` names it


def ticks(path: Path) -> list[tuple[dt.datetime, int]]:
    """The due times fired so far, each with the pid of the server that ran it."""
    if not path.exists():
        return []
    found = []
    for line in path.read_text().splitlines():
        call_id, pid = line.split()
        name, _, due = call_id.rpartition("@")
        assert name == "tick"
        found.append((dt.datetime.fromisoformat(due), int(pid)))
    return found


def assert_each_due_time_once(
    fired: list[tuple[dt.datetime, int]],
    interrupted: tuple[int, dt.datetime] | None = None,
) -> list[dt.datetime]:
    """Every second from the first due time fired to the last, each exactly once.

    ``interrupted``: the pid of a server that lost its connection (or died) at that moment. A
    firing it was running then was never acked, so another server runs it again — at least
    once, as any call (the scheduler still fired it once). That run, and only that one, may
    show twice: once by the interrupted server, within a second of the moment."""
    counts = Counter(due for due, _ in fired)
    doubles = {due: n for due, n in counts.items() if n > 1}
    if interrupted is not None:
        pid, at = interrupted
        doubles = {
            due: n
            for due, n in doubles.items()
            if not (
                n == 2
                and abs((due - at).total_seconds()) <= 1.5
                and pid in [p for d, p in fired if d == due]
            )
        }
    assert not doubles, f"fired more than once: {doubles}"
    dues = sorted(counts)
    expected = [dues[0] + dt.timedelta(seconds=i) for i in range(len(dues))]
    missing = sorted(set(expected) - set(dues))
    assert dues == expected, f"never fired: {missing[:10]}"
    return dues


async def holders(url: str) -> list[dict[str, Any]]:
    return [s for s in await inspect_servers(url, "default", wait=0.5) if s.get("scheduler")]


def atasks_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


@pytest.fixture
async def schedule_servers(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> AsyncIterator[Servers]:
    """``servers`` of the every-second schedule; its queues deleted afterwards."""
    yield servers
    servers.stop_all()
    topology = Topology("default")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.queue_delete(topology.request_queue(TICK))
        await channel.queue_delete(topology.schedules_queue)


def start(servers: Servers, tmp_path: Path, *args: str) -> None:
    env: dict[str, str | None] = {"ATASKS_TEST_TICKS": str(tmp_path / "ticks")}
    servers.start("--events", *args, workload=WORKLOAD, env=env)


@pytest.fixture
async def fleet(schedule_servers: Servers, tmp_path: Path) -> Servers:
    """Three servers of the every-second schedule, serving."""
    for _ in range(3):
        start(schedule_servers, tmp_path)
    for index in range(3):
        await schedule_servers.wait_serving(index)
    return schedule_servers


async def test_three_servers_fire_each_due_time_once(
    fleet: Servers, amqp_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks"
    await until(lambda: len(ticks(path)) >= 1, within=15)
    started = time.monotonic()
    await asyncio.sleep(20)  # the test's duration: 20 due times
    fired = ticks(path)
    dues = assert_each_due_time_once(fired)
    assert len(dues) >= 19, f"{len(dues)} due times fired in {time.monotonic() - started:.0f}s"
    (holder,) = await holders(amqp_url)  # exactly one server holds the role
    assert {pid for _, pid in fired} <= {p.pid for p in fleet.processes}
    listed = atasks_cli("schedules", "--url", amqp_url, "--json")
    assert listed.returncode == 0, listed.stderr
    found = json.loads(listed.stdout)
    assert found["scheduler"] == holder["server"]
    tick = found["schedules"]["tick"]
    assert tick["when"] == "every 0:00:01"
    assert tick["atask"] == TICK
    assert tick["result"]["ok"] is True
    assert dt.datetime.fromisoformat(tick["next_due"]) > dt.datetime.fromisoformat(
        tick["last_fired"]
    )
    table = atasks_cli("schedules", "--url", amqp_url).stdout
    assert "tick" in table
    assert "every 0:00:01" in table
    assert "ok (" in table
    inspected = atasks_cli("inspect", "--url", amqp_url).stdout.splitlines()
    assert "role" in inspected[0]
    assert sum("scheduler" in line for line in inspected[2:]) == 1


async def test_killing_the_scheduler_hands_the_role_over_without_a_double_or_a_gap(
    fleet: Servers, amqp_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "ticks"
    await until(lambda: len(ticks(path)) >= 3, within=15)
    (holder,) = await holders(amqp_url)
    events: list[Event] = []
    watcher = await watch_events(amqp_url, events)
    os.kill(int(holder["pid"]), signal.SIGKILL)
    killed, killed_at = time.monotonic(), dt.datetime.now(dt.UTC)
    async with asyncio.timeout(5):  # takeover within 5 s
        while not [s for s in await holders(amqp_url) if s["pid"] != holder["pid"]]:
            pass
    took = time.monotonic() - killed
    after = killed_at + dt.timedelta(seconds=3)  # a few due times after the takeover
    await until(lambda: max(due for due, _ in ticks(path)) >= after, within=10)
    dues = assert_each_due_time_once(ticks(path), (int(holder["pid"]), killed_at))
    last = f"tick@{dues[-1].isoformat()}"
    await until(lambda: any(e.kind == "fired" and e.call_id == last for e in events), within=5)
    watcher.cancel()
    (elected,) = [e for e in events if e.kind == "elected"]
    assert elected.server != holder["server"]
    assert elected.timestamp - killed_at.timestamp() < 5
    print(
        f"takeover: elected {elected.timestamp - killed_at.timestamp():.3f}s after the kill, "
        f"seen by inspect in {took:.2f}s; {len(dues)} due times, each fired once"
    )


async def test_loopback_fires_each_due_time_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, "atasks.schedules")
    fired: list[str | None] = []

    @schedule(interval=dt.timedelta(seconds=1), namespace="loopback-schedules")
    async def every_second() -> None:
        fired.append(atasks.current_call_id())

    router = await atasks.setup(namespace="loopback-schedules")
    await until(lambda: len(fired) >= 3, within=10)
    assert router.statistics().scheduler
    await atasks.close("loopback-schedules")
    assert len(set(fired)) == len(fired)
    dues = sorted(dt.datetime.fromisoformat(str(c).rpartition("@")[2]) for c in fired)
    assert dues == [dues[0] + dt.timedelta(seconds=i) for i in range(len(dues))]
    assert all(str(c).startswith(f"{every_second.name}@") for c in fired)
    # 86,400 a day at one a second: firings are logged at DEBUG only
    firings = [r for r in caplog.records if r.getMessage().startswith("fired ")]
    assert len(firings) >= 3
    assert {r.levelno for r in firings} == {logging.DEBUG}


@schedule(interval=dt.timedelta(seconds=1), name="failing", namespace="failing-schedules")
async def failing() -> None:
    raise ValueError("no disk left")


async def wait_for_failed_result(router: atasks.Router) -> dict[str, Any]:
    def result() -> dict[str, Any] | None:
        schedules = router.statistics().schedules or {}
        found: dict[str, Any] | None = schedules.get("failing", {}).get("result")
        return found

    await until(lambda: result() is not None, within=20)
    found = result()
    assert found is not None
    assert found["ok"] is False
    assert found["error"] == "builtins.ValueError: no disk left"
    assert found["call_id"] == f"failing@{found['due']}"
    return found


async def test_a_failed_run_is_logged_dead_lettered_and_kept_as_the_schedules_result(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = await atasks.setup(namespace="failing-schedules")
    found = await wait_for_failed_result(router)
    # at ERROR by the server that ran it, with its traceback
    [logged] = [
        r
        for r in caplog.records
        if r.levelno == logging.ERROR and r.getMessage().startswith(f"call {found['call_id']} ")
    ]
    assert "no disk left" in logged.getMessage()
    assert logged.exc_info is not None
    transport = router.transport
    assert isinstance(transport, LoopbackTransport)
    await until(lambda: bool(transport.dead_letters), within=10)
    dead = transport.dead_letters[0]
    assert (dead.request.call_id, dead.reason) == (found["call_id"], "failed")
    assert dead.error == "builtins.ValueError: no disk left"
    await atasks.close("failing-schedules")


async def test_a_failed_run_on_a_broker_is_dead_lettered_once_with_its_last_error(
    amqp_url: str,
) -> None:
    router = await atasks.setup("amqp", url=amqp_url, namespace="failing-schedules", serve=True)
    try:
        await wait_for_failed_result(router)
        dead: list[DeadLetter] = []
        async with asyncio.timeout(20):
            while len(dead) < 2:  # two due times: their outcomes are committed one by one
                dead = await list_dead_letters(amqp_url, "failing-schedules")
        call_ids = [letter.call_id for letter in dead]
        assert len(set(call_ids)) == len(call_ids), f"dead-lettered twice: {call_ids}"
        assert {(d.atask, d.reason, d.error) for d in dead} == {
            (failing.name, "failed", "builtins.ValueError: no disk left")
        }
        assert all(d.call_id.startswith("failing@") for d in dead)
    finally:
        await atasks.close("failing-schedules")
        topology = Topology("failing-schedules")
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            for queue in (
                topology.schedules_queue,
                topology.request_queue(failing.name),
                topology.dead_letter_queue,
            ):
                await channel.queue_delete(queue)


async def test_a_scheduler_cut_off_the_broker_hands_the_role_over(
    schedule_servers: Servers, rabbit: RabbitNode, amqp_url: str, tmp_path: Path
) -> None:
    """The holder loses its connection (and comes back): another server takes over, and every
    due time is still fired once."""
    path = tmp_path / "ticks"
    async with Proxy(rabbit.port) as proxy:
        start(schedule_servers, tmp_path, "--url", proxy.url)  # alone: it takes the role
        await schedule_servers.wait_serving(0)
        await until(lambda: len(ticks(path)) >= 2, within=15)
        for _ in range(2):
            start(schedule_servers, tmp_path)
        for index in (1, 2):
            await schedule_servers.wait_serving(index)
        (holder,) = await holders(amqp_url)
        assert holder["pid"] == schedule_servers.processes[0].pid
        accepted = proxy.accepted
        cut_at = dt.datetime.now(dt.UTC)
        assert proxy.cut()
        async with asyncio.timeout(5):
            while not [s for s in await holders(amqp_url) if s["pid"] != holder["pid"]]:
                pass
        await proxy.wait_accepted(accepted + 1)  # the cut-off server is back, and waits
        after = cut_at + dt.timedelta(seconds=3)
        await until(lambda: max(due for due, _ in ticks(path)) >= after, within=10)
    assert_each_due_time_once(ticks(path), (int(holder["pid"]), cut_at))
