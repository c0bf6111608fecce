"""A private, throw-away RabbitMQ node for tests and benchmarks: ``with RabbitNode() as node:``.

Runs Debian's scripts in /usr/lib/rabbitmq/bin directly (no /usr/sbin wrappers, no systemd).
Data, logs, config and HOME (so the Erlang cookie) live in one base directory; the node has its
own epmd, node name and free ports, and listens on 127.0.0.1 only. The nodes of a cluster
(the project's dev/rabbitcluster.py) share one ``Epmd`` and one cookie instead.

``RabbitNode(root=DIR)`` runs the broker installed in another Debian root instead (e.g. sid's
RabbitMQ 4.x, built by the project's dev/rabbitmq4.py): epmd, the server and rabbitmqctl run
through ``chroot DIR``, and the files the broker reads and writes live in a directory inside DIR.
That needs root (chroot, and mounting /proc in DIR).

``python -m atasks.testing.rabbitnode [BASE_DIR] [--root DIR]`` runs one by hand until Ctrl-C.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import fcntl
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

from atasks.testing.probe import amqp_version

RABBIT_BIN = Path("/usr/lib/rabbitmq/bin")
LOOPBACK_ERL_ARGS = "-kernel inet_dist_use_interface {127,0,0,1}"

_live: weakref.WeakSet[RabbitNode | Epmd] = weakref.WeakSet()
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


def _clean_env() -> dict[str, str]:
    """This process's environment without what would point a broker elsewhere."""
    skip = ("RABBITMQ_", "ERL_", "NOTIFY_SOCKET")
    return {k: v for k, v in os.environ.items() if not k.startswith(skip)}


def _in_root(root: Path | None, *argv: str) -> list[str]:
    """``argv``, run inside ``root`` if there is one."""
    return list(argv) if root is None else ["/usr/sbin/chroot", str(root), *argv]


def _prepare_root(root: Path | None) -> None:
    """Give the root what its broker needs from the host, if not done yet: /proc mounted (a
    reboot unmounts it) and the host's /etc/hosts, so that the node's and the CLI's host names
    resolve. Runs under a lock: nodes may start at once in other processes or threads."""
    if root is None:
        return
    if os.geteuid() != 0:
        raise PermissionError(f"a broker in {root} runs through chroot: needs root")
    with open(root / "tmp" / ".atasks-prepare.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = root / "proc"
        if not os.path.ismount(proc):
            subprocess.run(
                ["mount", "-t", "proc", "proc", str(proc)], check=True, capture_output=True
            )
        hosts, copy = Path("/etc/hosts"), root / "etc" / "hosts"
        if not copy.exists() or copy.read_bytes() != hosts.read_bytes():
            shutil.copyfile(hosts, copy)


def _spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a session of its own, its output appended to ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            env=env,
            cwd=log_path.parent,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _check(proc: subprocess.Popen[bytes], what: str, deadline: float, log_path: Path) -> None:
    """Raise, with the log's tail, if ``proc`` died or time is up."""
    rc = proc.poll()
    if rc is None and time.monotonic() < deadline:
        return
    why = f"exited with code {rc}" if rc is not None else "did not come up in time"
    try:
        lines = log_path.read_text(errors="replace").splitlines()[-40:]
    except OSError:
        lines = ["<no log>"]
    tail = "\n".join(lines)
    raise RuntimeError(f"{what} {why}; {log_path}:\n{tail}")


def _kill(proc: subprocess.Popen[bytes] | None, grace: float) -> None:
    """SIGTERM proc's group and wait up to ``grace`` seconds (0: not at all), then SIGKILL what
    is left of its whole tree (erl_child_setup & co. have sessions of their own)."""
    if proc is None:
        return
    tree = _tree(proc.pid)
    if grace > 0:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while (left := tree & _procs().keys()) and time.monotonic() < deadline:
        for pid, _ in left:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
    proc.wait()


class Epmd:
    """Erlang's port mapper daemon on a free loopback port, run inside ``root`` if given: one
    per node, or one shared by the nodes of a cluster, which find each other through it (and
    rabbitmqctl finds them). Its output goes to ``log_path``."""

    def __init__(self, log_path: Path, *, root: Path | None = None) -> None:
        self.log_path = log_path
        self.root = root
        (self.port,) = _free_ports(1)
        self._proc: subprocess.Popen[bytes] | None = None
        _live.add(self)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, deadline: float) -> None:
        """Start it unless it runs; block until it answers (raise past ``deadline``)."""
        if self.running:
            return
        self.stop()
        _prepare_root(self.root)
        env = {**_clean_env(), "ERL_EPMD_ADDRESS": "127.0.0.1"}
        self._proc = _spawn(
            _in_root(self.root, "epmd", "-port", str(self.port)), env, self.log_path
        )
        while not _epmd_ready(self.port):
            _check(self._proc, f"epmd on port {self.port}", deadline, self.log_path)
            time.sleep(0.02)

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        _kill(proc, grace=5)

    def close(self) -> None:
        self.stop()


class RabbitNode:
    """A private RabbitMQ node: own data dir, HOME, epmd, ports and node name.

    ``base_dir`` holds the node's log (``node.log``); a temporary one, removed by ``close()``,
    when not given. Without ``root`` the node's data, config and HOME live there too, and the
    broker is the host's. With ``root``, a Debian root directory with rabbitmq-server
    installed, the broker is that root's, run through chroot, and its data, config and HOME
    live in ``data``, a temporary directory inside the root that ``close()`` removes.

    ``epmd``: an epmd shared with other nodes (a cluster's), which this node starts if it is
    not running but never stops; without it the node has its own. ``cookie``: the Erlang
    cookie, which the nodes of a cluster share; without it Erlang makes one at first start.
    """

    def __init__(
        self,
        base_dir: str | os.PathLike[str] | None = None,
        *,
        root: str | os.PathLike[str] | None = None,
        epmd: Epmd | None = None,
        cookie: str | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        tls: tuple[Path, Path, Path] | None = None,
    ) -> None:
        self.root = Path(root).resolve() if root is not None else None
        if self.root is not None and not (self.root / RABBIT_BIN.relative_to("/")).is_dir():
            raise FileNotFoundError(f"no rabbitmq-server installed in {self.root}")
        self._owned = base_dir is None  # a temp dir of ours: close() removes it
        self.base = Path(base_dir or tempfile.mkdtemp(prefix="atasks-rabbit-"))
        self.base.mkdir(parents=True, exist_ok=True)
        self.data = self.base
        if self.root is not None:  # where the chroot'd broker can see it
            self.data = Path(tempfile.mkdtemp(prefix="atasks-rabbit-", dir=self.root / "tmp"))
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.nodename = f"atasks-test-{secrets.token_hex(4)}@localhost"
        self.port, self.dist_port, self.management_port = _free_ports(3)
        self.log_path = self.base / "node.log"
        self.version: str | None = None  # as the running node announces it, once started
        self._node: subprocess.Popen[bytes] | None = None
        self._own_epmd = epmd is None
        self.epmd = epmd or Epmd(self.base / "epmd.log", root=self.root)
        for sub in ("home", "mnesia", "log", "conf.d"):
            (self.data / sub).mkdir(parents=True, exist_ok=True)
        if cookie is not None:
            cookie_file = self.data / "home" / ".erlang.cookie"
            cookie_file.write_text(cookie)
            cookie_file.chmod(0o400)  # Erlang refuses a cookie others may read
        (self.data / "enabled_plugins").write_text("[].\n")
        (self.data / "rabbitmq-env.conf").write_text("")
        (self.data / "advanced.config").write_text(  # for enable_management(), if it is called
            '[{rabbitmq_management, [{tcp_config, [{ip, "127.0.0.1"}, '
            f"{{port, {self.management_port}}}]}}]}}].\n"
        )
        config = (
            f"listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "disk_free_limit.absolute = 1MB\n"
            "vm_memory_high_watermark.relative = 0.8\n"
        )
        self.tls_port: int | None = None
        if tls is not None:
            config += self._tls_config(tls)
        (self.data / "rabbitmq.conf").write_text(config)
        _live.add(self)

    @property
    def url(self) -> str:
        """AMQP URL for the guest user."""
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _tls_config(self, tls: tuple[Path, Path, Path]) -> str:
        """A TLS listener that wants a client certificate signed by the CA: ``tls`` is the
        (CA, server certificate, server key) PEM files, copied where the broker can read them."""
        (self.tls_port,) = _free_ports(1)
        folder = self.data / "tls"
        folder.mkdir()
        seen = folder if self.root is None else "/" / folder.relative_to(self.root)
        lines = [f"listeners.ssl.default = 127.0.0.1:{self.tls_port}"]
        for option, source in zip(("cacertfile", "certfile", "keyfile"), tls, strict=True):
            shutil.copy(source, folder / f"{option}.pem")
            (folder / f"{option}.pem").chmod(0o644)  # the broker may run as another user
            lines.append(f"ssl_options.{option} = {seen}/{option}.pem")
        lines += ["ssl_options.verify = verify_peer", "ssl_options.fail_if_no_peer_cert = true"]
        return "\n".join(lines) + "\n"

    def tls_url(self, query: str, user: str = "guest", password: str = "guest") -> str:
        """``amqps://`` URL of the TLS listener; ``query`` names the client's files
        (``cafile=…&certfile=…&keyfile=…``, as aiormq reads them)."""
        assert self.tls_port is not None, "the node was made without tls"
        return f"amqps://{user}:{password}@127.0.0.1:{self.tls_port}/?{query}"

    @property
    def epmd_port(self) -> int:
        return self.epmd.port

    @property
    def running(self) -> bool:
        """True while the node's process is alive."""
        return self._node is not None and self._node.poll() is None

    @property
    def env(self) -> dict[str, str]:
        """Environment for the node's processes (also usable for rabbitmqctl). Its paths are
        as the broker sees them: inside the root, if there is one."""
        env = _clean_env()
        d = self.data if self.root is None else "/" / self.data.relative_to(self.root)
        env.update(
            HOME=str(d / "home"),
            ERL_EPMD_PORT=str(self.epmd_port),
            ERL_EPMD_ADDRESS="127.0.0.1",
            ERL_CRASH_DUMP=str(d / "erl_crash.dump"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
            RABBITMQ_LOG_BASE=str(d / "log"),
            RABBITMQ_LOGS="-",  # to stdout, which is node.log
            RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
            RABBITMQ_CONFIG_FILES=str(d / "conf.d"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(d / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(d / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(d / "rabbit.pid"),
            RABBITMQ_SCHEDULER_BIND_TYPE="u",  # several nodes: don't pin to cores
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=LOOPBACK_ERL_ARGS,
            RABBITMQ_CTL_ERL_ARGS=LOOPBACK_ERL_ARGS,
        )
        return env

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """Run ``rabbitmqctl ARGS`` against this node and return its stdout."""
        argv = _in_root(self.root, str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args)
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"rabbitmqctl {' '.join(args)}: {done.stderr}")
        return done.stdout

    @property
    def management_url(self) -> str:
        """The management plugin's HTTP API (once ``enable_management()`` ran), as guest."""
        return f"http://guest:guest@127.0.0.1:{self.management_port}/"

    def enable_management(self, timeout: float = 60) -> None:
        """Enable the management plugin on the running node (a second or two; most tests do
        without it) and block until its HTTP port answers."""
        plugins = str(RABBIT_BIN / "rabbitmq-plugins")
        argv = _in_root(self.root, plugins, "-n", self.nodename, "enable", "rabbitmq_management")
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"rabbitmq-plugins enable rabbitmq_management: {done.stderr}")
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", self.management_port), timeout=1).close()
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the management API on port {self.management_port} is silent")
            time.sleep(0.05)

    def start(self) -> float:
        """Start epmd (unless it runs) and the node; block until AMQP answers. Returns seconds."""
        if self.running:
            return 0.0
        self.kill()  # reap leftovers of a crashed run
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        try:
            self.epmd.start(deadline)
            server = _in_root(self.root, str(RABBIT_BIN / "rabbitmq-server"))
            self._node = _spawn(server, self.env, self.log_path)
            while (version := amqp_version(self.port)) is None:
                _check(self._node, f"rabbitmq-server for {self.nodename}", deadline, self.log_path)
                time.sleep(0.05)
            self.version = version or "unknown"
        except BaseException:
            self.stop()
            raise
        return time.monotonic() - t0

    def stop(self) -> float:
        """Stop the node, then its epmd if its own, leaving no process. Returns seconds."""
        t0 = time.monotonic()
        node, self._node = self._node, None
        _kill(node, grace=self.stop_timeout)
        if self._own_epmd:
            self.epmd.stop()
        return time.monotonic() - t0

    def send_signal(self, sig: int) -> None:
        """Send ``sig`` to the node's whole process tree: ``SIGSTOP`` freezes it (it misses
        every heartbeat, its sockets stay open), ``SIGCONT`` thaws it."""
        if self._node is None:
            raise RuntimeError(f"{self.nodename} is not running")
        for pid in [self._node.pid, *(pid for pid, _ in _tree(self._node.pid))]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        """Crash the node: SIGKILL its whole process tree at once, no clean shutdown. Its epmd
        runs on, as it would on a host; ``start()`` brings the node back."""
        node, self._node = self._node, None
        _kill(node, grace=0)

    def close(self) -> None:
        """Stop, and remove the base directory if this node created it, and the data
        directory in the root."""
        self.stop()
        if self.root is not None:
            shutil.rmtree(self.data, ignore_errors=True)
        if self._owned:
            shutil.rmtree(self.base, ignore_errors=True)

    def restart(self) -> float:
        """Stop, then start on the same ports, name and data. Returns seconds."""
        t0 = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - t0

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
    parser = argparse.ArgumentParser(description="Run a private RabbitMQ node until Ctrl-C.")
    parser.add_argument("base_dir", nargs="?", help="for its log (and data, without --root)")
    parser.add_argument("--root", help="run the broker installed in this Debian root")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    node = RabbitNode(args.base_dir, root=args.root)
    try:
        took = node.start()
        print(node.url, flush=True)
        print(
            f"RabbitMQ {node.version}, node {node.nodename}, log {node.log_path}, data "
            f"{node.data}, up in {took:.1f}s; Ctrl-C stops"
        )
        while True:
            signal.pause()
    except KeyboardInterrupt:
        pass
    finally:
        print(f"stopped in {node.stop():.1f}s", file=sys.stderr)
        node.close()


if __name__ == "__main__":
    main()
