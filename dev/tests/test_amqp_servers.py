"""atasks across processes through a real RabbitMQ: competing servers, crashes, shutdown,
a broker restart, nested fan-out under a small concurrency."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
import workload
from servers import REPO, Servers, delete_queues, wait_for_ready, wait_until_served

import atasks
from atasks.errors import DeliveryLimitExceeded
from atasks.transport.backends.amqp.dead import list_dead_letters
from atasks.transport.backends.amqp.topology import Topology

pytestmark = pytest.mark.timeout(120)

QUEUES = Topology("default")


@pytest.fixture
async def client(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url)


async def test_server_in_another_process(servers: Servers, client: None) -> None:
    server = servers.start()
    assert await wait_until_served(workload.ready) == server.pid


async def test_a_server_keeps_what_it_started_with_out_of_the_collectors_sight(
    servers: Servers, client: None
) -> None:
    servers.start()
    await wait_until_served(workload.ready)
    # Frozen before it consumes: no call can come first.
    assert await workload.frozen_objects() > 10_000  # at least its modules


async def test_competing_servers_share_the_work(servers: Servers, client: None) -> None:
    pids = {servers.start().pid, servers.start().pid}
    await wait_until_served(workload.ready)
    seen: set[int] = set()
    async with asyncio.timeout(60):
        while seen != pids:  # the second server may still be starting
            seen |= set(await asyncio.gather(*(workload.slow_pid(0.05) for _ in range(20))))
    assert seen == pids


async def test_two_services_on_one_broker_never_see_each_others_requests(
    servers: Servers, client: None
) -> None:
    workload_server = servers.start()
    scenarios_server = servers.start(workload="examples/scenarios.py")
    await wait_until_served(workload.ready)
    from examples import scenarios

    assert await wait_until_served(scenarios.add, 2, 3) == 5
    assert {await workload.pid() for _ in range(20)} == {workload_server.pid}
    await delete_queues(servers.url, scenarios)
    assert scenarios_server.poll() is None
    assert "workload" not in servers.log(1)  # the scenarios server never saw a workload call


async def test_request_waits_in_the_queue_while_no_server_runs(
    servers: Servers, client: None
) -> None:
    first = servers.start()
    await wait_until_served(workload.ready)
    first.send_signal(signal.SIGTERM)
    await asyncio.to_thread(first.wait, 30)
    call = asyncio.ensure_future(workload.pid())
    await wait_for_ready(servers.url, QUEUES.request_queue(workload.pid.name), 1)
    assert not call.done()  # queued, not failed
    second = servers.start()
    assert await asyncio.wait_for(call, 30) == second.pid


async def test_sigkill_mid_call_loses_nothing(
    servers: Servers, client: None, tmp_path: Path
) -> None:
    pids = {servers.start().pid, servers.start().pid}
    await wait_until_served(workload.ready)
    marker = tmp_path / "running-on"
    call = asyncio.ensure_future(workload.mark_then_sleep(str(marker), 2.0))
    async with asyncio.timeout(30):
        while not marker.exists() or not marker.read_text():
            if call.done():
                call.result()  # failed before it ran: show why
            await asyncio.sleep(0.02)
    victim = int(marker.read_text())
    os.kill(victim, signal.SIGKILL)
    survivor = await asyncio.wait_for(call, 60)
    assert survivor in pids - {victim}


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_request_that_kills_every_server_is_dead_lettered(
    servers: Servers, amqp_url: str, queue_type: str
) -> None:
    await atasks.setup("amqp", url=amqp_url, queue_type=queue_type)
    kept = await queue_length(amqp_url, "atasks-dead.default")
    earlier = {d.call_id for d in await list_dead_letters(amqp_url, "default")}
    supervisor = servers.start("--workers", "2", "--queue-type", queue_type)
    await wait_until_served(workload.ready)
    with pytest.raises(DeliveryLimitExceeded, match=r"kill_my_server.*5 times"):
        await asyncio.wait_for(workload.kill_my_server(), 90)
    assert await workload.pid() != supervisor.pid  # restarted workers still serve
    assert await queue_length(amqp_url, "atasks-dead.default") == kept + 1
    poison = [d for d in await list_dead_letters(amqp_url, "default") if d.call_id not in earlier]
    assert [(d.atask, d.reason) for d in poison] == [
        (workload.kill_my_server.name, "delivery_limit")
    ]
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait, 30) == 0
    assert "died" in servers.log(0)


async def queue_length(url: str, queue: str) -> int:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


@pytest.mark.parametrize(("coalesce", "messages"), [(1, 6), (32, 1)])
async def test_graceful_shutdown_finishes_work_and_returns_the_rest(
    servers: Servers, amqp_url: str, coalesce: int, messages: int
) -> None:
    await atasks.setup("amqp", url=amqp_url, coalesce=coalesce)
    first = servers.start("--concurrency", "2", "--grace", "10")
    await wait_until_served(workload.ready)
    # Every atask registered: stopped while it starts, a server returns the calls it took
    # (test_startup.py), and this test is about finishing them.
    await servers.wait_serving(0)
    calls = [asyncio.ensure_future(workload.slow_pid(0.5)) for _ in range(8)]
    # Two run on the one server (concurrency 2); the other six wait in the broker: six
    # messages, or the one the server handed back of the eight coalesced into one.
    await wait_for_ready(servers.url, QUEUES.request_queue(workload.slow_pid.name), messages)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    second = servers.start()
    results = await asyncio.wait_for(asyncio.gather(*calls), 60)
    # The first server finished the two it was running, and took no more once stopping.
    assert sorted(results) == sorted([first.pid] * 2 + [second.pid] * 6)


async def test_nested_fan_out_does_not_deadlock_at_concurrency_4(
    servers: Servers, client: None
) -> None:
    servers.start("--concurrency", "4")
    await wait_until_served(workload.ready)
    # 16 levels: two children each for the top 9, then one: 2**10 - 1 + 2**9 * 6 = 4095 calls
    calls = await asyncio.wait_for(workload.fanout(15, 9), 100)
    assert calls == 2**10 - 1 + 2**9 * 6


async def test_atasks_run_server_and_client_end_to_end(
    servers: Servers, client: None, amqp_url: str
) -> None:
    from examples import scenarios

    servers.start("--workers", "2", workload="examples/scenarios.py")
    await wait_until_served(scenarios.withdraw, 10, 1)  # defined last: all are served
    finished = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "atasks",
            "run",
            "examples/scenarios.py",
            "--mode",
            "client",
            "--url",
            amqp_url,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    await delete_queues(amqp_url, scenarios)
    assert finished.returncode == 0, finished.stderr + servers.log(0)
    assert finished.stdout.splitlines() == [
        "sequence: 55",
        "parallel: [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]",
        "recursion: fibonacci(10) = 55",
        "stream: [10, 9, 8, 7, 6, 5, 4, 3, 2, 1]",
        "error: NotEnoughMoney cannot withdraw 20 from 5",
    ]
