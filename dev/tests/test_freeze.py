"""A cluster node frozen (SIGSTOP) for 30 s: its sockets stay open and it answers nothing, so
only missed heartbeats tell. The client or the servers connected to it leave it for another node,
every call made before or during the freeze completes with its own result (durable replies, the
default: a call waits for a connection for ``reconnect_wait``, 30 s by default, then fails with
``TransportError``), and the node, thawed (SIGCONT), is a running member of the cluster again."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from pathlib import Path

import pytest
import workload
from rabbitcluster import RabbitCluster
from servers import Servers, wait_until_served
from test_survive import all_results, connected_to, named, start_calls

import atasks

pytestmark = pytest.mark.timeout(300)

FROZEN = 30.0  # seconds the node stays frozen
HEARTBEAT = 2  # seconds; a connection is given up after (2 + 1) * 3 s without a frame
CALLS = 100


def rejoined(cluster: RabbitCluster, index: int, within: float = 180) -> float:
    """Seconds until node ``index`` runs in the cluster again: thawed, it finds the others
    took it for down, and restarts its broker to rejoin them (autoheal)."""
    t0 = time.monotonic()
    while True:
        try:
            cluster.await_all_running(via=index)
            return time.monotonic() - t0
        except RuntimeError:  # its broker is restarting
            if time.monotonic() - t0 > within:
                raise
            time.sleep(0.5)


def heartbeat(urls: list[str]) -> list[str]:
    return [f"{url}&heartbeat={HEARTBEAT}" for url in urls]


@pytest.mark.parametrize("victim", ["client", "server"])
async def test_calls_survive_a_frozen_cluster_node(
    rabbit_cluster: RabbitCluster,
    tmp_path: Path,
    victim: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="atasks.amqp")
    cluster = rabbit_cluster
    urls = cluster.urls
    servers = Servers(",".join(heartbeat(named(urls[1:] + urls[:1], "atasks-server"))), tmp_path)
    frozen = 0 if victim == "client" else 1
    thawed = True
    try:
        servers.start("--concurrency", str(2 * CALLS))
        await atasks.setup("amqp", url=heartbeat(named(urls, "atasks-client")))
        await servers.wait_serving(0)
        await wait_until_served(workload.ready)
        assert await connected_to(cluster, "atasks-client", via=2) == [0]
        assert await connected_to(cluster, "atasks-server", via=2) == [1]

        before = await start_calls(tmp_path / "before", seconds=2.0, count=CALLS)
        cluster.nodes[frozen].send_signal(signal.SIGSTOP)
        thawed = False
        frozen_at = time.monotonic()
        # Made while it is frozen: the client may not know yet.
        (tmp_path / "during").mkdir()
        during = [
            asyncio.ensure_future(workload.double_after(CALLS + i, 0.1, str(tmp_path / "during")))
            for i in range(CALLS)
        ]
        await all_results(before)
        results = await asyncio.wait_for(asyncio.gather(*during), 120)
        assert results == [2 * (CALLS + i) for i in range(CALLS)]
        took = time.monotonic() - frozen_at
        print(f"all {2 * CALLS} results {took:.1f}s after the freeze")
        assert took < FROZEN  # they did not wait for the node to thaw
        left = max(0.0, FROZEN - (time.monotonic() - frozen_at))
        await asyncio.sleep(left)  # the freeze lasts its 30 s, whatever the calls did
        cluster.nodes[frozen].send_signal(signal.SIGCONT)
        thawed = True
        healed = await asyncio.to_thread(rejoined, cluster, frozen)
        print(f"node {frozen} thawed and running in the cluster again in {healed:.1f}s")
        assert cluster.running_members(via=frozen) == {node.nodename for node in cluster.nodes}
        # Connections stay where they went, and the fleet goes on serving.
        assert frozen not in await connected_to(cluster, "atasks-client", via=2)
        assert frozen not in await connected_to(cluster, "atasks-server", via=2)
        (tmp_path / "after").mkdir()
        after = workload.double_after(7, 0, str(tmp_path / "after"))
        assert await asyncio.wait_for(after, 60) == 14
        assert servers.processes[0].poll() is None
    finally:
        if not thawed:
            cluster.nodes[frozen].send_signal(signal.SIGCONT)
        servers.stop_all()
        print("--- server ---")
        print(servers.log(0)[-5000:])
