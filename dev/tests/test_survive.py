"""Calls in flight survive the broker restarting, connections dropping, and the crash of the
cluster node the client or the server is connected to, with default settings: each completes
with its own result, none fails, none hangs."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import workload
from proxy import Proxy
from rabbitcluster import RabbitCluster
from servers import Servers, wait_until_served

import atasks
from atasks.testing.rabbitnode import RabbitNode

pytestmark = pytest.mark.timeout(240)

CALLS = 100
CLUSTER_CALLS = 200


async def start_calls(
    markers: Path, seconds: float = 1.0, count: int = CALLS
) -> list[asyncio.Future[int]]:
    """``count`` calls, returned once every one of them runs on a server."""
    os.mkdir(markers)
    calls = [
        asyncio.ensure_future(workload.double_after(i, seconds, str(markers))) for i in range(count)
    ]
    async with asyncio.timeout(60):
        while len(os.listdir(markers)) < count:
            for call in calls:
                if call.done():
                    call.result()  # failed before it ran: say why
            await asyncio.sleep(0.02)
    return calls


async def all_results(calls: list[asyncio.Future[int]]) -> None:
    results = await asyncio.wait_for(asyncio.gather(*calls), 120)
    assert results == [2 * i for i in range(len(calls))]


async def test_calls_survive_a_broker_restart(
    rabbit_factory: Callable[[Path], RabbitNode], tmp_path: Path
) -> None:
    with rabbit_factory(tmp_path / "rabbit") as node:
        servers = Servers(node.url, tmp_path)
        try:
            servers.start("--concurrency", str(CALLS))
            await atasks.setup("amqp", url=node.url)
            await servers.wait_serving(0, within=60)  # every atask registered
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
        await servers.wait_serving(0, within=60)  # every atask registered
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
        await servers.wait_serving(0, within=60)  # every atask registered: none left to declare
        await wait_until_served(workload.ready)
        calls = await start_calls(tmp_path / "markers", seconds=2.0)
        assert proxy.cut() == 1
        await all_results(calls)
        assert proxy.accepted == 2
        assert server.poll() is None
    assert "kept the reply" in servers.log(0)


def named(urls: list[str], name: str) -> list[str]:
    """``urls`` with a connection name, which rabbitmqctl list_connections shows."""
    return [f"{url}?name={name}" for url in urls]


async def connected_to(cluster: RabbitCluster, name: str, via: int) -> list[int]:
    """The nodes that the connections named ``name`` are on, as node ``via`` lists them."""
    listed = await asyncio.to_thread(
        cluster.nodes[via].ctl,
        "list_connections",
        "port",
        "client_properties",
        "--formatter",
        "json",
    )
    ports = [node.port for node in cluster.nodes]
    return sorted(
        ports.index(connection["port"])
        for connection in json.loads(listed)
        if ["connection_name", "longstr", name] in connection["client_properties"]
    )


async def quorum_queues(cluster: RabbitCluster, via: int) -> dict[str, tuple[int, list[int]]]:
    """Each quorum queue's leader and members (node indexes), as node ``via`` lists them."""
    listed = await asyncio.to_thread(
        cluster.nodes[via].ctl,
        "list_queues",
        "name",
        "type",
        "leader",
        "members",
        "--formatter",
        "json",
    )
    names = [node.nodename for node in cluster.nodes]
    return {
        queue["name"]: (names.index(queue["leader"]), sorted(map(names.index, queue["members"])))
        for queue in json.loads(listed)
        if queue["type"] == "quorum"
    }


@pytest.mark.parametrize("victim", ["client", "server"])
async def test_calls_survive_the_crash_of_a_cluster_node(
    rabbit_cluster: RabbitCluster,
    tmp_path: Path,
    victim: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The client connects to node 0 first, the server to node 1: the node of one of them is
    killed (SIGKILL, no clean shutdown) while 200 calls run. Each connection fails over to
    another node, each queue elects a leader among its other replicas, every call completes,
    and the node, restarted, is a running member of the cluster again."""
    caplog.set_level(logging.DEBUG, logger="atasks.amqp")  # to count duplicate replies
    cluster = rabbit_cluster
    urls = cluster.urls
    servers = Servers(",".join(named(urls[1:] + urls[:1], "atasks-server")), tmp_path)
    try:
        servers.start("--concurrency", str(CLUSTER_CALLS))
        await atasks.setup("amqp", url=named(urls, "atasks-client"))
        await servers.wait_serving(0)
        await wait_until_served(workload.ready)
        assert await connected_to(cluster, "atasks-client", via=2) == [0]
        assert await connected_to(cluster, "atasks-server", via=2) == [1]
        queues = await quorum_queues(cluster, via=2)
        # Direct replies (the default): no reply queue. Three replicas of the request queue,
        # led by the node where the server declared it: the node to kill when victim="server".
        assert not [name for name in queues if f".{os.getpid()}." in name]
        assert queues[f"atasks.default.{workload.double_after.name}"] == (1, [0, 1, 2])

        calls = await start_calls(tmp_path / "markers", seconds=2.0, count=CLUSTER_CALLS)
        killed = 0 if victim == "client" else 1
        cluster.kill(killed)
        killed_at = time.monotonic()
        await all_results(calls)
        print(f"all {CLUSTER_CALLS} results {time.monotonic() - killed_at:.1f}s after the kill")
        dropped = [r for r in caplog.records if "dropped a reply for unknown" in r.getMessage()]
        print(f"the client dropped {len(dropped)} duplicate replies")
        assert len(dropped) <= CLUSTER_CALLS  # at most one each: a kept reply sent once

        assert killed not in await connected_to(cluster, "atasks-client", via=2)
        assert killed not in await connected_to(cluster, "atasks-server", via=2)
        assert servers.processes[0].poll() is None
        took = await asyncio.to_thread(cluster.restart, killed)
        print(f"node {killed} restarted and running in the cluster in {took:.1f}s")
        assert cluster.running_members(via=killed) == {node.nodename for node in cluster.nodes}
    finally:
        servers.stop_all()
        lines = servers.log(0).splitlines()
        kept = [line for line in lines if "kept the reply to" in line]
        print("--- server (without its 'kept the reply' lines) ---")
        print("\n".join(line for line in lines if "kept the reply to" not in line)[-5000:])
        print(f"--- the server kept {len(kept)} replies for a lost connection")
