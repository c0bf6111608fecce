"""A private, throw-away RabbitMQ cluster for tests: ``with RabbitCluster() as cluster:``.

Three (``size``) ``RabbitNode``s of one broker (the host's, or the one in ``root``), on
127.0.0.1, which share one epmd (so they, and rabbitmqctl, find each other) and one Erlang
cookie; each has its own node name, AMQP and distribution ports, and data directory. They boot
at once; then every node but the first joins the first (``stop_app``, ``join_cluster``,
``start_app``). ``kill(i)`` crashes a node (SIGKILL of its whole process tree); ``restart(i)``
starts it again on the same name, ports and data, and returns once it is a running member of
the cluster again. A quorum queue gets 3 replicas by default (3.x and 4.x alike), so one on
every node of a cluster of 3.

``python dev/rabbitcluster.py [BASE_DIR] [--root DIR]`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atasks.testing.rabbitnode import Epmd, RabbitNode

NET_TICKTIME = 8  # seconds


class RabbitCluster:
    """``size`` private nodes forming one cluster. ``base_dir`` holds a directory per node (its
    log, and its data without ``root``) and the epmd's log; a temporary one, removed by
    ``close()``, when not given."""

    def __init__(
        self,
        base_dir: str | Path | None = None,
        *,
        size: int = 3,
        root: str | Path | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self._owned = base_dir is None
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="atasks-cluster-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.root = Path(root).resolve() if root is not None else None
        self.start_timeout = start_timeout
        self.epmd = Epmd(self.base / "epmd.log", root=self.root)
        cookie = secrets.token_hex(16)
        self.nodes = [
            RabbitNode(
                self.base / f"node{i}",
                root=self.root,
                epmd=self.epmd,
                cookie=cookie,
                start_timeout=start_timeout,
            )
            for i in range(size)
        ]
        for node in self.nodes:
            # A node that stops answering (frozen, cut off) is down for the others after about
            # NET_TICKTIME s, not the default 60: the rest of the cluster goes on without it
            # (quorum queues elect leaders elsewhere, declarations stop waiting for it). Back,
            # the side that lost the partition restarts and rejoins (autoheal).
            (node.data / "advanced.config").write_text(
                f"[{{kernel, [{{net_ticktime, {NET_TICKTIME}}}]}}].\n"
            )
            (node.data / "conf.d" / "cluster.conf").write_text(
                "cluster_partition_handling = autoheal\n"
            )

    @property
    def urls(self) -> list[str]:
        """Each node's AMQP URL, in node order."""
        return [node.url for node in self.nodes]

    @property
    def version(self) -> str | None:
        return self.nodes[0].version

    def start(self) -> float:
        """Boot the nodes, form the cluster, wait until every node runs in it. Returns
        seconds."""
        t0 = time.monotonic()
        try:
            self.epmd.start(t0 + self.start_timeout)
            with ThreadPoolExecutor(len(self.nodes)) as pool:
                list(pool.map(RabbitNode.start, self.nodes))
            first = self.nodes[0]
            for node in self.nodes[1:]:
                node.ctl("stop_app")
                node.ctl("join_cluster", first.nodename)
                node.ctl("start_app")
            self.await_all_running()
        except BaseException:
            self.close()
            raise
        return time.monotonic() - t0

    def kill(self, index: int) -> None:
        """Crash node ``index``: SIGKILL its whole process tree, no clean shutdown."""
        self.nodes[index].kill()

    def restart(self, index: int) -> float:
        """Start node ``index`` again (after ``kill``) on its name, ports and data; return once
        it runs as a member of the cluster again. Returns seconds."""
        t0 = time.monotonic()
        self.nodes[index].start()
        self.await_all_running(via=index)
        return time.monotonic() - t0

    def await_all_running(self, via: int = 0) -> None:
        """Until every node runs in the cluster, as node ``via`` sees it."""
        node = self.nodes[via]
        timeout = str(int(self.start_timeout))
        node.ctl(  # rabbitmqctl gives up first, saying so
            "await_online_nodes",
            str(len(self.nodes)),
            "--timeout",
            timeout,
            timeout=self.start_timeout + 30,
        )
        running = self.running_members(via)
        if running != {n.nodename for n in self.nodes}:
            raise RuntimeError(f"{node.nodename} sees running members {sorted(running)}")

    def running_members(self, via: int) -> set[str]:
        """The nodes running in the cluster, as node ``via`` sees it."""
        status = json.loads(self.nodes[via].ctl("cluster_status", "--formatter", "json"))
        return set(status["running_nodes"])

    def close(self) -> None:
        """Stop every node and the epmd; remove what they left on disk."""
        for node in self.nodes:
            node.close()
        self.epmd.close()
        if self._owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def __enter__(self) -> RabbitCluster:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main() -> None:
    """CLI: start a cluster, print its URLs, stop it on Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description="Run a private RabbitMQ cluster until Ctrl-C.")
    parser.add_argument(
        "base_dir", nargs="?", help="for the nodes' logs (and data, without --root)"
    )
    parser.add_argument("--root", help="run the broker installed in this Debian root")
    parser.add_argument("--size", type=int, default=3, help="how many nodes (default: 3)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    cluster = RabbitCluster(args.base_dir, size=args.size, root=args.root)
    try:
        took = cluster.start()
        print(",".join(cluster.urls), flush=True)
        names = ", ".join(node.nodename for node in cluster.nodes)
        print(f"RabbitMQ {cluster.version}, nodes {names}, up in {took:.1f}s; Ctrl-C stops")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
