"""A server's start-up, declaring and consuming a queue for each of its atasks one by one, is
as robust as its serving: a connection lost meanwhile is waited for and the registrations
finished on the next one; SIGTERM meanwhile stops it gracefully (exit 0, nothing lost)."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import many_atasks
import pytest
from proxy import Proxy
from servers import Servers, delete_queues, wait_until_served

import atasks
from atasks.errors import JobNotFound
from atasks.testing.rabbitnode import RabbitNode

pytestmark = pytest.mark.timeout(240)

WORKLOAD = "dev/tests/many_atasks.py"
ATASKS = many_atasks.COUNT + 2
REGISTERING = f"registering {ATASKS} atasks of namespace 'default'"
SERVING = f"serving {ATASKS} atasks of namespace 'default'"


@pytest.fixture
async def many(servers: Servers, amqp_url: str) -> AsyncIterator[Servers]:
    """Servers of many_atasks.py, and a client; their queues deleted after the test."""
    await atasks.setup("amqp", url=amqp_url)
    yield servers
    servers.stop_all()
    await delete_queues(amqp_url, many_atasks)


async def test_a_connection_lost_while_registering_is_waited_for(
    many: Servers, rabbit: RabbitNode
) -> None:
    async with Proxy(rabbit.port) as proxy:
        many.url = proxy.url
        server = many.start(workload=WORKLOAD)
        await many.wait_logged(0, REGISTERING, within=60)
        assert await wait_until_served(many_atasks.pid) == server.pid  # the first one
        assert proxy.cut() == 1
        await many.wait_serving(0, within=120)
        log = many.log(0)
        # The connection was lost while the server registered its atasks, not after.
        assert log.index(REGISTERING) < log.index("lost the broker connection") < log.index(SERVING)
        assert proxy.accepted == 2  # it came back by itself
        results = await asyncio.wait_for(
            asyncio.gather(*(plus(1) for plus in many_atasks.NUMBERED)), 60
        )
        assert results == [1 + number for number in range(many_atasks.COUNT)]
        assert server.poll() is None


async def test_sigterm_while_registering_stops_gracefully(many: Servers, tmp_path: Path) -> None:
    """The call its first atask took is handed back to the broker, and another server runs it."""
    first = many.start(workload=WORKLOAD)
    await many.wait_logged(0, REGISTERING, within=60)
    call = await running_on(first.pid, tmp_path / "running-on")
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 60) == 0
    log = many.log(0)
    assert "stopped (SIGTERM) while registering its atasks" in log
    assert SERVING not in log  # stopped while registering, not after
    second = many.start(workload=WORKLOAD)
    assert await asyncio.wait_for(call, 120) == second.pid


async def running_on(pid: int, marker: Path) -> asyncio.Future[int]:
    """A call of ``many_atasks.mark_then_sleep``, once server ``pid`` runs it (made again while
    its queue is not yet declared)."""
    async with asyncio.timeout(60):
        while True:
            call = asyncio.ensure_future(many_atasks.mark_then_sleep(str(marker), 5.0))
            while not call.done() and not written(marker):
                await asyncio.sleep(0.02)
            if not call.done():
                assert written(marker) == str(pid)
                return call
            try:
                call.result()
            except JobNotFound:
                await asyncio.sleep(0.05)


def written(marker: Path) -> str:
    return marker.read_text() if marker.exists() else ""


async def test_a_connection_that_does_not_return_fails_the_start_clearly(
    many: Servers, rabbit: RabbitNode
) -> None:
    """Registering waits for the connection as long as a call would (``reconnect_wait``)."""
    async with Proxy(rabbit.port) as proxy:
        many.url = proxy.url
        server = many.start(workload=WORKLOAD, env={"ATASKS_RECONNECT_WAIT": "2"})
        await many.wait_logged(0, REGISTERING, within=60)
        assert await wait_until_served(many_atasks.pid) == server.pid
        proxy.refusing = True
        assert proxy.cut() == 1
        assert await asyncio.to_thread(server.wait, 60) == 1
    last = many.log(0).splitlines()[-1]
    assert re.fullmatch(r"Error: .*connection to the broker at \S+ for 2s", last), last
    assert SERVING not in many.log(0)
