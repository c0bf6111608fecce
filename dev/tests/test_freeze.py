"""A cluster node frozen (SIGSTOP) for 30 s: its sockets stay open and it answers nothing, so
only missed heartbeats tell. The client or the servers connected to it leave it for another node,
and every call made before or during the freeze completes with its own result (either reply
path; a call waits for a working connection for ``reconnect_wait``, 30 s by default, then fails
with ``TransportError``; one with a deadline fails with ``TimeoutError`` at its deadline). On 3.x
they complete while the node is still frozen; on 4.x the cluster takes longer to go on without
it, and they may complete once it is back. Thawed (SIGCONT), the node is a running member of the
cluster again as a rule (RabbitMQ's autoheal: reported, not asserted). The test cluster
takes a silent node for down after 8 s (net_ticktime, dev/rabbitcluster.py)."""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import workload
from conftest import broker_root
from rabbitcluster import RabbitCluster
from servers import Servers, wait_until_served
from test_survive import connected_to, named, start_calls

import atasks

pytestmark = pytest.mark.timeout(300)

FROZEN = 30.0  # seconds the node stays frozen
HEARTBEAT = 2  # seconds; a connection is given up after (2 + 1) * 3 s without a frame
CALLS = 100


def rejoined(cluster: RabbitCluster, index: int, within: float) -> float:
    """Seconds until node ``index`` runs in the cluster again: thawed, it finds the others
    took it for down, and restarts its broker to rejoin them (autoheal)."""
    t0 = time.monotonic()
    while True:
        try:
            cluster.await_all_running(via=index)
            return time.monotonic() - t0
        except (RuntimeError, subprocess.TimeoutExpired):  # its broker is restarting
            if time.monotonic() - t0 > within:
                raise
            time.sleep(0.5)


def heartbeat(urls: list[str]) -> list[str]:
    return [f"{url}&heartbeat={HEARTBEAT}" for url in urls]


@pytest.fixture
def fresh_cluster(broker: str) -> Iterator[RabbitCluster]:
    """A cluster of its own for each test: a thawed node's partition may still be healing
    (autoheal restarts brokers) when the test ends."""
    cluster = RabbitCluster(root=broker_root(broker))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()


@pytest.mark.parametrize("victim", ["client", "server"])
async def test_calls_survive_a_frozen_cluster_node(
    fresh_cluster: RabbitCluster,
    tmp_path: Path,
    victim: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="atasks.amqp")
    cluster = fresh_cluster
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
            asyncio.ensure_future(workload.double_after(i, 0.1, str(tmp_path / "during")))
            for i in range(CALLS)
        ]
        everything = asyncio.ensure_future(asyncio.gather(*before, *during))
        await asyncio.wait([everything], timeout=FROZEN)  # the freeze lasts 30 s at most
        while_frozen = time.monotonic() - frozen_at if everything.done() else None
        await asyncio.sleep(max(0.0, FROZEN - (time.monotonic() - frozen_at)))  # the whole 30 s
        cluster.nodes[frozen].send_signal(signal.SIGCONT)
        thawed = True
        results = await asyncio.wait_for(everything, 120)
        took = while_frozen or time.monotonic() - frozen_at
        assert results == [2 * i for i in range(CALLS)] * 2  # each its own result, none failed
        print(f"all {2 * CALLS} results {took:.1f}s after the freeze", end=", ")
        print("while frozen" if while_frozen is not None else f"after the thaw at {FROZEN:g}s")
        if cluster.version and cluster.version.startswith("3."):
            # 3.x goes on without the frozen node within seconds (4.x's quorum queues and
            # metadata store take longer: measured 70-76 s, so there they finish after it).
            assert while_frozen is not None
        try:  # RabbitMQ's part (autoheal), not atasks': reported, not asserted
            healed = await asyncio.to_thread(rejoined, cluster, frozen, 90)
            print(f"node {frozen} thawed and running in the cluster again in {healed:.1f}s")
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            print(f"node {frozen} not seen running in the cluster 90 s after the thaw: {exc}")
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
