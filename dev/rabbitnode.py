"""Start and stop a private, throw-away RabbitMQ node for tests and benchmarks.

Uses the Debian ``rabbitmq-server`` scripts in /usr/lib/rabbitmq/bin directly
(no /usr/sbin wrappers, no systemd). Everything lives under one base directory:
data, logs, config, HOME (and so the Erlang cookie). The node gets its own
epmd on a private port, all listeners bind to 127.0.0.1 only.

    with RabbitNode() as node:
        connect(node.url)

Run ``python dev/rabbitnode.py`` to start a node by hand (Ctrl-C stops it).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from pathlib import Path
from types import TracebackType

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
EPMD = "epmd"
AMQP_HEADER = b"AMQP\x00\x00\x09\x01"

_live: weakref.WeakSet[RabbitNode] = weakref.WeakSet()


def _free_ports(count: int) -> list[int]:
    """Return ``count`` distinct currently-free TCP ports on 127.0.0.1."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _amqp_ready(port: int, timeout: float = 1.0) -> bool:
    """True if the port answers the AMQP 0-9-1 header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(AMQP_HEADER)
            data = b""
            while len(data) < 11:  # frame header (7) + class/method ids (4)
                chunk = s.recv(11 - len(data))
                if not chunk:
                    return False
                data += chunk
    except OSError:
        return False
    # type 1 (method), channel 0, class 10 (connection), method 10 (start)
    return data[0] == 1 and data[1:3] == b"\0\0" and data[7:11] == b"\0\x0a\0\x0a"


def _epmd_ready(port: int) -> bool:
    """True if an epmd on 127.0.0.1:port answers a NAMES_REQ."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"\x00\x01n")  # length 1, NAMES_REQ
            return len(s.recv(4)) == 4
    except OSError:
        return False


def _proc_tree(root: int) -> set[tuple[int, str]]:
    """(pid, start time) of ``root``'s descendants, read from /proc."""
    parent: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parent[int(entry)] = (int(fields[1]), fields[19])
    found: set[tuple[int, str]] = set()
    todo = [root]
    while todo:
        pid = todo.pop()
        for child, (ppid, started) in parent.items():
            if ppid == pid:
                found.add((child, started))
                todo.append(child)
    return found


def _alive(pid: int, started: str) -> bool:
    """True if pid still runs (not a zombie) and is the same process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[19] == started and fields[0] != "Z"


class RabbitNode:
    """A private RabbitMQ node (own data dir, HOME, epmd, ports, node name)."""

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
    ) -> None:
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="atasks-rabbit-"))
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodename = f"atasks-test-{secrets.token_hex(4)}@localhost"
        self.port, self.dist_port, self.epmd_port = _free_ports(3)
        self.log_path = self.base / "node.log"
        self._node: subprocess.Popen[bytes] | None = None
        self._epmd: subprocess.Popen[bytes] | None = None
        self._write_files()
        _live.add(self)

    @property
    def url(self) -> str:
        """AMQP URL for the guest user."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        """True while the node process is alive."""
        return self._node is not None and self._node.poll() is None

    def _write_files(self) -> None:
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)
        (self.base / "enabled_plugins").write_text("[].\n")
        (self.base / "rabbitmq-env.conf").write_text("")
        (self.base / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
        )

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_", "NOTIFY_SOCKET"))
        }
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
            RABBITMQ_LOGS="-",  # to stdout, i.e. into node.log
            RABBITMQ_CONFIG_FILE=str(b / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(b / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(b / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(b / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(b / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(b / "rabbit.pid"),
            RABBITMQ_SCHEDULER_BIND_TYPE="u",  # don't pin several nodes to one core
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=("-kernel inet_dist_use_interface {127,0,0,1}"),
        )
        return env

    def _spawn(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen(
                argv,
                env=env,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return "\n".join(text.splitlines()[-lines:])

    def start(self) -> float:
        """Start epmd and the node; block until AMQP answers. Returns seconds."""
        if self.running:
            return 0.0
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        env = self._env()
        try:
            self._epmd = self._spawn([EPMD, "-port", str(self.epmd_port)], env)
            while not _epmd_ready(self.epmd_port):
                self._check_alive(self._epmd, "epmd", deadline)
                time.sleep(0.02)
            self._node = self._spawn([str(RABBIT_BIN / "rabbitmq-server")], env)
            while not _amqp_ready(self.port):
                self._check_alive(self._node, "rabbitmq-server", deadline)
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - t0

    def _check_alive(self, proc: subprocess.Popen[bytes], what: str, deadline: float) -> None:
        rc = proc.poll()
        if rc is None and time.monotonic() < deadline:
            return
        why = f"exited with code {rc}" if rc is not None else "timed out"
        raise RuntimeError(
            f"{what} for {self.nodename} {why} (log {self.log_path}):\n{self._log_tail()}"
        )

    def _kill(self, proc: subprocess.Popen[bytes] | None) -> None:
        """SIGTERM the process, wait (bounded), then SIGKILL its whole group."""
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                # Only the leader: SIGTERM to erl_child_setup would crash beam.
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(self.stop_timeout)
        # Reap stragglers (erl_child_setup, inet_gethost, or a hung leader).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> float:
        """Stop the node, then its epmd. Idempotent. Returns seconds taken."""
        t0 = time.monotonic()
        node, self._node = self._node, None
        epmd, self._epmd = self._epmd, None
        self._kill(node)
        self._kill(epmd)
        return time.monotonic() - t0

    def restart(self) -> float:
        """Stop and start again with the same ports, name and data dir."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.stop()


@atexit.register
def _stop_all() -> None:
    for node in list(_live):
        node.stop()


def main() -> None:
    """CLI: start a node, print its URL, stop it on Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = RabbitNode(sys.argv[1] if len(sys.argv) > 1 else None)
    took = node.start()
    print(f"{node.url}  (node {node.nodename}, dir {node.base}, up in {took:.2f}s)")
    print("Ctrl-C to stop", flush=True)
    try:
        signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped in {node.stop():.2f}s")


if __name__ == "__main__":
    main()
