"""``atasks run`` adds the middlewares ``ATASKS_MIDDLEWARE`` (or ``--middleware``) names, as
``atasks.setup()`` does, in every mode: a middleware module in a folder of the test's own
stamps each served result and writes a line for each call it sends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
from servers import Servers

MIDDLEWARE = """
import os

from atasks import Middleware


class Stamp(Middleware):
    async def call(self, call, proceed):
        with open(os.environ["STAMP_FILE"], "a") as out:
            out.write(f"call {call.atask} from {os.getpid()}\\n")
        return await proceed(call)

    async def serve(self, call, proceed):
        return f"{await proceed(call)}, stamped by {os.getpid()}"
"""

ATASKS = """
from atasks import atask


@atask
async def greet(name: str) -> str:
    return f"hello {name}"


async def aiomain(mode: str) -> None:
    if mode != "server":
        print(await greet("ada"))
"""

QUEUE = "atasks.default.stamped.greet"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder with the middleware module ``stamp`` and the atasks module ``stamped``."""
    (tmp_path / "stamp.py").write_text(MIDDLEWARE)
    (tmp_path / "stamped.py").write_text(ATASKS)
    return tmp_path


def _env(folder: Path, middleware: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(folder), "STAMP_FILE": str(folder / "calls.txt")}
    env.pop("ATASKS_MIDDLEWARE", None)
    if middleware is not None:
        env["ATASKS_MIDDLEWARE"] = middleware
    return env


def run(folder: Path, *args: str, middleware: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", "run", "stamped.py", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(folder, middleware),
    )


def calls_sent(folder: Path) -> list[str]:
    stamps = folder / "calls.txt"
    return stamps.read_text().splitlines() if stamps.exists() else []


def test_loopback_mode_adds_the_middlewares_atasks_middleware_names(folder: Path) -> None:
    done = run(folder, middleware="stamp:Stamp")
    assert done.returncode == 0, done.stderr
    pid = done.stdout.strip().rpartition(" ")[2]
    assert done.stdout.strip() == f"hello ada, stamped by {pid}"
    assert calls_sent(folder) == [f"call stamped.greet from {pid}"]


def test_without_the_setting_no_middleware_runs(folder: Path) -> None:
    done = run(folder, middleware=None)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello ada"
    assert calls_sent(folder) == []


def test_the_middleware_option_wins_over_the_variable(folder: Path) -> None:
    done = run(folder, "--middleware", "stamp:Stamp", middleware="stamp:Nowhere")
    assert done.returncode == 0, done.stderr
    assert "stamped by" in done.stdout


@pytest.mark.parametrize(
    ("names", "error"),
    [
        ("stamp", "ATASKS_MIDDLEWARE='stamp': 'stamp' is not module:Class"),
        ("stamp:Nowhere", "middleware 'stamp:Nowhere': module 'stamp' has no attribute"),
        ("absent:Stamp", "middleware 'absent:Stamp': No module named 'absent'"),
    ],
)
def test_a_bad_setting_is_one_clear_line(folder: Path, names: str, error: str) -> None:
    done = run(folder, middleware=names)
    assert done.returncode != 0
    assert error in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_servers_and_clients_add_the_middlewares(
    amqp_url: str, folder: Path, tmp_path: Path, workers: str
) -> None:
    """A server (supervised workers with ``--workers 2``, told by ``--middleware``, which the
    supervisor passes on) stamps the results it serves; a client run writes a line for each
    call it sends."""
    servers = Servers(amqp_url, tmp_path)
    flags = ["--workers", workers]
    env: dict[str, str | None] = {**_env(folder, "stamp:Stamp")}
    if workers != "1":
        flags += ["--middleware", "stamp:Stamp"]
        env["ATASKS_MIDDLEWARE"] = None
    try:
        server = servers.start(*flags, workload=str(folder / "stamped.py"), env=env)
        await servers.wait_serving(0)
        done = run(folder, "--mode", "client", "--url", amqp_url, middleware="stamp:Stamp")
        assert done.returncode == 0, done.stderr + servers.log(0)
        stamped_by = int(done.stdout.strip().rpartition(" ")[2])
        assert done.stdout.strip() == f"hello ada, stamped by {stamped_by}"
        # One server serves in its own process; a supervisor's workers in theirs.
        assert (stamped_by == server.pid) == (workers == "1")
        (sent,) = calls_sent(folder)
        assert sent.startswith("call stamped.greet from ")
        assert int(sent.rpartition(" ")[2]) != stamped_by  # the client's own process
    finally:
        servers.stop_all()
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(QUEUE)
