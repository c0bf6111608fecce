"""Versions that meet (AMQP): a server refuses a request it cannot read with both versions named
and keeps it; a caller sends batches only once a server said it reads them; and this release
meets the previous one (``dev/previous_release``, built by dev/previous.py), both ways."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import workload
from servers import Servers, until, wait_for_ready, wait_until_served

import atasks
from atasks.transport.backends.amqp.dead import DeadLetter, list_dead_letters
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.backends.amqp.versions import H_NEEDS, H_WIRE, WIRE_VERSION

pytestmark = pytest.mark.timeout(240)

QUEUES = Topology("default")
DEV = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def previous() -> Path:
    """The previous release's venv (its source tree in ``src``), built once."""
    built = subprocess.run(
        [sys.executable, str(DEV / "previous.py")], check=True, capture_output=True, text=True
    )
    return Path(built.stdout.strip().splitlines()[-1])


async def dead_letter(url: str, call_id: str) -> DeadLetter:
    async with asyncio.timeout(30):
        while True:
            found = [d for d in await list_dead_letters(url, "default") if d.call_id == call_id]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


UNREADABLE: list[tuple[dict[str, Any], str | None, str]] = [
    ({H_WIRE: 99}, None, "wire version 99, newer than this server reads"),
    ({H_WIRE: "two"}, None, "wire version is 'two', not a number"),
    ({H_WIRE: WIRE_VERSION}, "batch-v3", "type 'batch-v3'"),
    ({H_WIRE: WIRE_VERSION, H_NEEDS: "batch,zstd"}, None, "needs zstd"),
]


@pytest.fixture
async def one_server(servers: Servers, amqp_url: str) -> Servers:
    """One server of the workload, serving every atask; this process set up to call it."""
    servers.start()
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    return servers


def unreadable_call_id() -> str:
    return f"unreadable-{os.urandom(6).hex()}"


@pytest.mark.parametrize(("headers", "kind", "says"), UNREADABLE)
@pytest.mark.parametrize("waits", [True, False], ids=["call", "fire-and-forget"])
async def test_a_request_a_server_cannot_read_is_kept_and_its_caller_told_why(
    one_server: Servers,
    amqp_url: str,
    headers: dict[str, Any],
    kind: str | None,
    says: str,
    waits: bool,
) -> None:
    call_id = unreadable_call_id()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        replies = await channel.declare_queue(exclusive=True)
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"garbage \x00\xff of a wire to come",
                headers=headers,
                type=kind,
                correlation_id=call_id,
                reply_to=replies.name if waits else None,
                content_type="application/x-python-pickle",
            ),
            routing_key=QUEUES.request_queue(workload.pid.name),
        )
        letter = await dead_letter(amqp_url, call_id)
        assert letter.reason == "rejected"
        assert letter.error.startswith("atasks.errors.WireVersionError: atask 'workload.pid': ")
        assert says in letter.error
        assert f"this server speaks atasks wire version {WIRE_VERSION}" in letter.error
        if waits:
            reply = await replies.get(timeout=30, fail=False)
            async with asyncio.timeout(30):
                while reply is None:
                    await asyncio.sleep(0.05)
                    reply = await replies.get(fail=False)
            assert reply.type == "error"
            assert reply.correlation_id == call_id
            assert reply.headers["atasks-error-message"] == letter.error.split(": ", 1)[1]
            await reply.ack()
    assert await workload.pid() == one_server.processes[0].pid  # the server goes on


async def test_a_broadcast_a_server_cannot_read_is_kept_with_why(
    one_server: Servers, amqp_url: str
) -> None:
    """A server's own copy of a broadcast is checked as a request from a queue is."""
    call_id = unreadable_call_id()
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.get_exchange(QUEUES.broadcast_exchange)
        await exchange.publish(
            aio_pika.Message(
                b"garbage of a wire to come",
                headers={H_WIRE: 99},
                correlation_id=call_id,
                content_type="application/x-python-pickle",
            ),
            routing_key=workload.broadcast_tally.name,
        )
    letter = await dead_letter(amqp_url, call_id)
    assert letter.reason == "rejected"
    assert letter.error.startswith(
        "atasks.errors.WireVersionError: atask 'workload.broadcast_tally': "
    )
    assert "wire version 99, newer than this server reads" in letter.error
    assert await workload.pid() == one_server.processes[0].pid  # the server goes on


async def test_calls_travel_together_once_a_server_said_it_reads_batches(
    servers: Servers, amqp_url: str
) -> None:
    first = servers.start()
    await servers.wait_serving(0)  # its queues declared; no call made yet
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    await atasks.setup("amqp", url=amqp_url)
    queue = QUEUES.request_queue(workload.pid.name)
    # Nobody answered yet: each call goes alone (an older server may be the one to read it).
    calls = [asyncio.ensure_future(workload.pid()) for _ in range(10)]
    await wait_for_ready(amqp_url, queue, 10)
    second = servers.start()
    assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [second.pid] * 10
    await servers.wait_serving(1)  # its SIGTERM handler installed
    second.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(second.wait, 30) == 0
    # It said it reads batches: the next fan-out travels in one message.
    calls = [asyncio.ensure_future(workload.pid()) for _ in range(10)]
    await wait_for_ready(amqp_url, queue, 1)
    third = servers.start()
    assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [third.pid] * 10


async def test_a_new_caller_meets_a_previous_server(
    servers: Servers, amqp_url: str, previous: Path, tmp_path: Path
) -> None:
    """The previous release's server (wire 1, says nothing of batches): this caller's calls and
    fire-and-forget requests reach it, each call alone."""
    src = previous / "src"
    old = servers.start(python=str(previous / "bin" / "python"), cwd=src)
    await atasks.setup("amqp", url=amqp_url)
    assert await wait_until_served(workload.ready) == old.pid
    tally = tmp_path / "tally"
    await workload.queued_tally(str(tally), "new", 0)
    assert (
        await asyncio.wait_for(asyncio.gather(*(workload.pid() for _ in range(40))), 60)
        == [old.pid] * 40
    )
    await until(lambda: tally.exists() and f"done new {old.pid}" in tally.read_text())
    old.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(old.wait, 30) == 0
    calls = [asyncio.ensure_future(workload.pid()) for _ in range(10)]
    await wait_for_ready(amqp_url, QUEUES.request_queue(workload.pid.name), 10)  # alone
    again = servers.start(python=str(previous / "bin" / "python"), cwd=src)
    assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [again.pid] * 10


async def test_a_previous_caller_meets_a_new_server(
    servers: Servers, amqp_url: str, previous: Path, tmp_path: Path
) -> None:
    """The previous release's caller batches (unasked, as it always did): this server reads
    its batches and its fire-and-forget requests."""
    first = servers.start()
    await servers.wait_serving(0)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    tally = tmp_path / "tally"
    client = await asyncio.create_subprocess_exec(
        str(previous / "bin" / "python"),
        str(DEV / "tests" / "previous_client.py"),
        amqp_url,
        "40",
        str(tally),
        cwd=previous / "src",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        # Nobody serves yet: its 40 calls wait in two batches (32 + 8).
        await wait_for_ready(amqp_url, QUEUES.request_queue(workload.pid.name), 2)
        new = servers.start()
        out, err = await asyncio.wait_for(client.communicate(), 90)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert client.returncode == 0, err.decode()
    assert json.loads(out) == [new.pid] * 40
    await until(lambda: tally.exists() and f"done previous {new.pid}" in tally.read_text())
