"""Calls in flight survive the broker restarting and connections dropping, with default
settings: each completes with its own result, none fails, none hangs."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import workload
from proxy import Proxy
from rabbitnode import RabbitNode
from servers import Servers, wait_until_served

import atasks

pytestmark = pytest.mark.timeout(240)

CALLS = 100


async def start_calls(markers: Path, seconds: float = 1.0) -> list[asyncio.Future[int]]:
    """``CALLS`` calls, returned once every one of them runs on a server."""
    os.mkdir(markers)
    calls = [
        asyncio.ensure_future(workload.double_after(i, seconds, str(markers))) for i in range(CALLS)
    ]
    async with asyncio.timeout(60):
        while len(os.listdir(markers)) < CALLS:
            for call in calls:
                if call.done():
                    call.result()  # failed before it ran: say why
            await asyncio.sleep(0.02)
    return calls


async def all_results(calls: list[asyncio.Future[int]]) -> None:
    results = await asyncio.wait_for(asyncio.gather(*calls), 120)
    assert results == [2 * i for i in range(CALLS)]


async def test_calls_survive_a_broker_restart(
    rabbit_factory: Callable[[Path], RabbitNode], tmp_path: Path
) -> None:
    with rabbit_factory(tmp_path / "rabbit") as node:
        servers = Servers(node.url, tmp_path)
        try:
            servers.start("--concurrency", str(CALLS))
            await atasks.setup("amqp", url=node.url)
            await wait_until_served(workload.ready)
            calls = await start_calls(tmp_path / "markers")
            await asyncio.to_thread(node.restart)
            await all_results(calls)
        finally:
            servers.stop_all()


async def test_calls_survive_the_clients_connection_dropping(
    servers: Servers, rabbit: RabbitNode, tmp_path: Path
) -> None:
    servers.start("--concurrency", str(CALLS))
    async with Proxy(rabbit.port) as proxy:
        await atasks.setup("amqp", url=proxy.url)
        await wait_until_served(workload.ready)
        calls = await start_calls(tmp_path / "markers")
        assert proxy.cut() == 1
        await all_results(calls)
        assert proxy.accepted == 2  # the client came back by itself


async def test_calls_survive_the_servers_connection_dropping(
    servers: Servers, rabbit: RabbitNode, tmp_path: Path
) -> None:
    await atasks.setup("amqp", url=rabbit.url)
    async with Proxy(rabbit.port) as proxy:
        servers.url = proxy.url
        server = servers.start("--concurrency", str(CALLS))
        await wait_until_served(workload.ready)
        calls = await start_calls(tmp_path / "markers", seconds=2.0)
        assert proxy.cut() == 1
        await all_results(calls)
        assert proxy.accepted == 2
        assert server.poll() is None
    assert "kept the reply" in servers.log(0)
