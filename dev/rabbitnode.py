"""A private, throw-away RabbitMQ node for tests and benchmarks: ``with RabbitNode() as node:``.

Runs Debian's scripts in /usr/lib/rabbitmq/bin directly (no /usr/sbin wrappers, no systemd).
Data, logs, config and HOME (so the Erlang cookie) live in one base directory; the node has its
own epmd, node name and free ports, and listens on 127.0.0.1 only.
``python dev/rabbitnode.py [BASE_DIR]`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
LOOPBACK_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

_live: weakref.WeakSet[RabbitNode] = weakref.WeakSet()
_ports_taken: set[int] = set()  # handed out in this process, not yet bound


def _free_ports(count: int) -> list[int]:
    """``count`` distinct TCP ports on 127.0.0.1: free now, not handed out before."""
    ports: list[int] = []
    with contextlib.ExitStack() as stack:  # hold each port until all are picked
        while len(ports) < count:
            s = stack.enter_context(socket.socket())
            s.bind(("127.0.0.1", 0))
            if (port := s.getsockname()[1]) not in _ports_taken:
                ports.append(port)
    _ports_taken.update(ports)
    return ports


def _amqp_ready(port: int) -> bool:
    """True if the port answers the AMQP 0-9-1 header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s, s.makefile("rb") as f:
            s.sendall(AMQP_HEADER)
            data = f.read(11)  # frame header (7) + class and method id (4)
    except OSError:
        return False
    # frame type 1 (method), channel 0, class 10 (connection), method 10 (start)
    return data[:3] == b"\x01\0\0" and data[7:11] == b"\0\x0a\0\x0a"


def _epmd_ready(port: int) -> bool:
    """True if an epmd on 127.0.0.1:port answers a NAMES_REQ."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"\x00\x01n")  # length 1, NAMES_REQ
            return len(s.recv(4)) == 4
    except OSError:
        return False


def _procs() -> dict[tuple[int, str], int]:
    """(pid, start time) -> parent pid, for every process that is not a zombie."""
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError, IndexError), open(f"/proc/{entry}/stat") as f:
            st = f.read().rsplit(")", 1)[1].split()
            if st[0] != "Z":
                procs[int(entry), st[19]] = int(st[1])
    return procs


def _tree(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of every descendant of ``root``."""
    procs, found, todo = _procs(), set(), [root]
    while todo:
        parent = todo.pop()
        kids = {proc for proc, ppid in procs.items() if ppid == parent}
        found |= kids
        todo += [pid for pid, _ in kids]
    return found


class RabbitNode:
    """A private RabbitMQ node: own data dir, HOME, epmd, ports and node name."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self._owned = base_dir is None  # a temp dir of ours: close() removes it
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="atasks-rabbit-"))
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodename = f"atasks-test-{secrets.token_hex(4)}@localhost"
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.log_path = self.base / "node.log"
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
        )
        _live.add(self)

    @property
    def url(self) -> str:
        """AMQP URL for the guest user."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        return self._node is not None and self._node.poll() is None

    @property
    def env(self) -> dict[str, str]:
        """Environment for the node's processes (also usable for rabbitmqctl)."""
        skip = ("RABBITMQ_", "ERL_", "NOTIFY_SOCKET")
        env = {k: v for k, v in os.environ.items() if not k.startswith(skip)}
        b = self.base
        env.update(
            HOME=str(b / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_CRASH_DUMP=str(b / "erl_crash.dump"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(b / "mnesia"),
            RABBITMQ_LOG_BASE=str(b / "log"),
            RABBITMQ_LOGS="-",  # to stdout, which is node.log
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(b / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(b / "rabbit.pid"),
            RABBITMQ_SCHEDULER_BIND_TYPE="u",  # several nodes: don't pin to cores
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=LOOPBACK_ERL_ARGS,
            RABBITMQ_CTL_ERL_ARGS=LOOPBACK_ERL_ARGS,
        )
        return env

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl ARGS`` against this node and return its stdout."""
        argv = [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr}")
        return done.stdout

    def start(self) -> float:
        """Start epmd and the node; block until AMQP answers. Returns seconds."""
        if self.running:
            return 0.0
        self.stop()  # reap leftovers of a crashed run
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        try:
            self._epmd = self._spawn(["epmd", "-port", str(self.epmd_port)])
            while not _epmd_ready(self.epmd_port):
                self._check(self._epmd, "epmd", deadline)
                time.sleep(0.02)
            self._node = self._spawn([str(RABBIT_BIN / "rabbitmq-server")])
            while not _amqp_ready(self.port):
                self._check(self._node, "rabbitmq-server", deadline)
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - t0

    def stop(self) -> float:
        """Stop the node, then its epmd, leaving no process. Returns seconds."""
        t0 = time.monotonic()
        node, self._node = self._node, None
        epmd, self._epmd = self._epmd, None
        self._kill(node)
        self._kill(epmd)
        return time.monotonic() - t0

    def close(self) -> None:
        """Stop, and remove the base directory if this node created it."""
        self.stop()
        if self._owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> float:
        """Stop, then start on the same ports, name and data. Returns seconds."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0

    def _spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                env=self.env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check(self, proc: subprocess.Popen[bytes], what: str, deadline: float) -> None:
        """Raise, with the log's tail, if ``proc`` died or time is up."""
        rc = proc.poll()
        if rc is None and time.monotonic() < deadline:
            return
        why = f"exited with code {rc}" if rc is not None else "did not come up in time"
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()[-40:]
        except OSError:
            lines = ["<no log>"]
        tail = "\n".join(lines)
        raise RuntimeError(f"{what} for {self.nodename} {why}; {self.log_path}:\n{tail}")

    def _kill(self, proc: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM proc's group, wait (bounded), SIGKILL what is left of its tree."""
        if proc is None:
            return
        tree = _tree(proc.pid)  # erl_child_setup & co. have sessions of their own
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(self.stop_timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 5
        while (left := tree & _procs().keys()) and time.monotonic() < deadline:
            for pid, _ in left:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.01)

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


@atexit.register
def _close_all() -> None:
    for node in list(_live):
        node.close()


def main() -> None:
    """CLI: start a node, print its URL, stop it on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = RabbitNode(sys.argv[1] if len(sys.argv) > 1 else None)
    try:
        took = node.start()
        print(node.url, flush=True)
        print(f"node {node.nodename}, dir {node.base}, up in {took:.1f}s; Ctrl-C stops")
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped in {node.stop():.1f}s", file=sys.stderr)
        node.close()


if __name__ == "__main__":
    main()
