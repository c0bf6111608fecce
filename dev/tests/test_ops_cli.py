"""Running atasks in production: ``atasks ping``, ``atasks inspect``'s queues and exit code,
``atasks events``' order and call ids, and a server started before its broker."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import workload
from servers import REPO, Servers, until, wait_until_served

import atasks
from atasks import cli
from atasks.events import Event
from atasks.monitor import EventFormatter, in_time_order
from atasks.runner import RunOptions
from atasks.testing.rabbitnode import RabbitNode

pytestmark = pytest.mark.timeout(180)


def atasks_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


async def atasks_cli_async(*args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(atasks_cli, *args)


def free_port() -> int:
    """A loopback port where nothing listens (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def nobody() -> str:
    """A namespace no server serves."""
    return f"nobody-{uuid.uuid4().hex[:8]}"


# --- ping ------------------------------------------------------------------------------------


async def test_ping_says_which_server_answers(servers: Servers, amqp_url: str) -> None:
    server = servers.start()
    await servers.wait_serving(0)
    for extra in ([], ["--local"]):
        done = await atasks_cli_async("ping", "--url", amqp_url, "--timeout", "30", *extra)
        assert done.returncode == 0, done.stderr
        assert f":{server.pid} answers: namespace default, " in done.stdout


def test_ping_fails_clearly_when_no_server_answers(amqp_url: str) -> None:
    namespace = nobody()
    done = atasks_cli("ping", "--url", amqp_url, "--namespace", namespace, "--timeout", "0.5")
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith(
        f"Error: no server of namespace {namespace!r} answered within 0.5s (broker amqp://guest:***@"
    )
    assert "guest:guest" not in done.stderr


def test_ping_fails_clearly_without_a_broker() -> None:
    url = f"amqp://guest:s3cret@127.0.0.1:{free_port()}/"
    done = atasks_cli("ping", "--url", url, "--timeout", "5")
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"Error: cannot reach the broker at {url.replace('s3cret', '***')}: connection refused "
        "(is the broker running on that port?)"
    ]


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_exits_1_when_no_server_answers(amqp_url: str) -> None:
    namespace = nobody()
    text = atasks_cli("inspect", "--url", amqp_url, "--namespace", namespace, "--wait", "0.3")
    assert (text.returncode, text.stdout) == (1, "")
    assert text.stderr == f"no server of namespace {namespace!r} answered within 0.3s\n"
    machine = atasks_cli(
        "inspect", "--url", amqp_url, "--namespace", namespace, "--wait", "0.3", "--json"
    )
    assert machine.returncode == 1
    assert json.loads(machine.stdout) == []


async def test_inspect_shows_request_queue_depth_and_consumers(
    servers: Servers, amqp_url: str
) -> None:
    """One server running one call at a time, and calls waiting behind it, each in a message of
    its own (coalesce=1): inspect counts them in the atask's queue, with one consumer."""
    server = servers.start("--concurrency", "1")
    await servers.wait_serving(0)
    await atasks.setup("amqp", url=amqp_url, coalesce=1)
    await wait_until_served(workload.pid)
    calls = [asyncio.ensure_future(workload.slow_pid(60)) for _ in range(6)]
    name = workload.slow_pid.name

    async def queue() -> dict[str, Any]:
        done = await atasks_cli_async("inspect", "--url", amqp_url, "--wait", "0.5", "--json")
        assert done.returncode == 0, done.stderr
        ours = [s for s in json.loads(done.stdout) if s["pid"] == server.pid]
        return ours[0]["queues"][name] if ours else {}

    try:
        async with asyncio.timeout(60):
            while (found := await queue()).get("messages", 0) < 1:
                pass
        assert found["queue"] == f"atasks.default.{name}"
        assert found["consumers"] == 1
        text = await atasks_cli_async("inspect", "--url", amqp_url, "--wait", "0.5")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        header = lines.index(next(line for line in lines if line.startswith("atask ")))
        assert lines[header].split() == ["atask", "queue", "waiting", "consumers", "servers"]
        row = next(line.split() for line in lines[header + 2 :] if line.startswith("slow_pid "))
        assert row[1] == f"atasks.default.{name}"
        assert int(row[2]) >= 1
        assert row[4] == "1"  # servers
    finally:
        for call in calls:
            call.cancel()
        await asyncio.gather(*calls, return_exceptions=True)


# --- events ----------------------------------------------------------------------------------


def _event(call_id: str, timestamp: float, kind: str = "started") -> Event:
    return Event(
        kind=kind,
        atask="m.f",
        call_id=call_id,
        parent_id=None,
        namespace="default",
        timestamp=timestamp,
    )


def test_events_show_whole_call_ids() -> None:
    """Every call id of a process starts with the same 16 digits: 8 of them told no call from
    another."""
    formatter = EventFormatter()
    line = formatter.format(_event("0123456789abcdef1f", 1000.0))
    assert "[0123456789abcdef1f]" in line
    scheduled = formatter.format(_event("nightly@2026-01-01T03:00:00+00:00", 1000.0))
    assert "[2026-01-01T03:00:00+00:00]" in scheduled


async def _arriving(
    batches: list[tuple[list[Event], float | asyncio.Event]],
) -> AsyncIterator[Event]:
    """Yield each batch of events after a delay (the network), or once its gate opens."""
    for events, after in batches:
        if isinstance(after, asyncio.Event):
            await after.wait()
        else:
            await asyncio.sleep(after)
        for event in events:
            yield event


async def test_events_come_out_in_the_order_they_happened() -> None:
    """Two servers' batches arrive in the wrong order; one that comes later than the window
    stays out of order, but is not lost."""
    late = asyncio.Event()
    a1, a2 = _event("a1", 1.0), _event("a2", 3.0)  # server A, sent first
    b1, b2 = _event("b1", 2.0), _event("b2", 4.0)  # server B, arriving just after
    stale = _event("stale", 0.5)
    source = _arriving([([a1, a2], 0), ([b2, b1], 0.05), ([stale], late)])
    seen: list[str] = []

    async def collect() -> None:
        async for event in in_time_order(source, window=1.0):
            seen.append(event.call_id)

    collecting = asyncio.ensure_future(collect())
    await until(lambda: len(seen) == 4)
    assert seen == ["a1", "b1", "a2", "b2"]
    late.set()
    await asyncio.wait_for(collecting, 10)
    assert seen == ["a1", "b1", "a2", "b2", "stale"]


async def test_a_server_with_a_slow_clock_holds_no_other_back() -> None:
    """A steady stream of events stamped in the past (a server whose clock is behind) must not
    keep the others' events waiting for ever: each goes out within its window."""
    stop = asyncio.Event()

    async def stream() -> AsyncIterator[Event]:
        yield _event("now", 1000.0)
        stamp = 0.0
        while not stop.is_set():
            stamp += 1
            yield _event(f"behind-{stamp:g}", stamp)
            await asyncio.sleep(0.01)

    seen: list[str] = []

    async def collect() -> None:
        async for event in in_time_order(stream(), window=0.1):
            seen.append(event.call_id)

    collecting = asyncio.ensure_future(collect())
    try:
        await until(lambda: "now" in seen, within=5)
    finally:
        stop.set()
        await asyncio.wait_for(collecting, 10)


# --- a server started before its broker ------------------------------------------------------


@pytest.fixture
def early_servers(tmp_path: Path) -> Iterator[Callable[[str], Servers]]:
    """Servers for a broker that may not be there yet; stopped by their PIDs after the test."""
    made: list[Servers] = []

    def make(url: str) -> Servers:
        made.append(Servers(url, tmp_path))
        return made[-1]

    yield make
    for started in made:
        started.stop_all()
        for index in range(len(started.processes)):
            print(f"--- server {index} ---\n{started.log(index)[-5000:]}")


WAITING = "waiting for the broker at amqp://guest:***@127.0.0.1:{port}/ up to {within}s"


async def test_a_server_started_before_its_broker_waits_for_it(
    rabbit_factory: Callable[[Path], RabbitNode],
    early_servers: Callable[[str], Servers],
    tmp_path: Path,
) -> None:
    node = rabbit_factory(tmp_path / "rabbit")  # its port is chosen; it is not started yet
    servers = early_servers(node.url)
    servers.start()
    waiting = WAITING.format(port=node.port, within=60)  # the default for servers
    await until(lambda: waiting in servers.log(0), within=30)
    await asyncio.to_thread(node.start)
    await servers.wait_serving(0, within=90)
    done = await atasks_cli_async("ping", "--url", node.url, "--timeout", "30")
    assert done.returncode == 0, done.stderr
    log = servers.log(0)
    assert log.count("waiting for the broker") == 1
    assert "guest:guest" not in log


def test_a_server_gives_up_on_a_broker_that_does_not_come() -> None:
    port = free_port()
    url = f"amqp://guest:s3cret@127.0.0.1:{port}/"
    done = atasks_cli(
        "run",
        "dev/tests/workload.py",
        "--mode",
        "server",
        "--url",
        url,
        env={"ATASKS_CONNECT_TIMEOUT": "1.5"},
    )
    assert done.returncode == 1
    assert done.stderr.count(WAITING.format(port=port, within=1.5)) == 1
    assert done.stderr.splitlines()[-1] == (
        f"Error: cannot connect to amqp://guest:***@127.0.0.1:{port}/: connection refused "
        "(is the broker running on that port?); waited 1.5s for it"
    )
    assert "s3cret" not in done.stderr + done.stdout


async def test_sigterm_stops_a_server_waiting_for_its_broker(
    early_servers: Callable[[str], Servers],
) -> None:
    """As PID 1 of a container, Python ignores a SIGTERM it has no handler for: the wait must
    have one, or stopping the container would take its whole grace period."""
    port = free_port()
    servers = early_servers(f"amqp://guest:guest@127.0.0.1:{port}/")
    server = servers.start()
    await until(lambda: WAITING.format(port=port, within=60) in servers.log(0), within=30)
    server.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(server.wait, 30) == 0
    assert "stopped (SIGTERM) while waiting for the broker" in servers.log(0)


def test_a_refused_login_is_not_waited_for(rabbit: RabbitNode) -> None:
    url = f"amqp://guest:wrong@127.0.0.1:{rabbit.port}/"
    done = atasks_cli("run", "dev/tests/workload.py", "--mode", "server", "--url", url)
    assert done.returncode == 1
    assert "access refused" in done.stderr.splitlines()[-1]
    assert "waiting for the broker" not in done.stderr


def test_supervised_workers_get_the_connect_timeout() -> None:
    options = RunOptions(mode="server", workers=2, connect_timeout=5.0)
    argv = cli._worker_argv(("app.py",), options, (), 0, False)
    assert argv[argv.index("--connect-timeout") + 1] == "5.0"
    assert "--connect-timeout" not in options.worker_flags()  # run_atask has no such flag
