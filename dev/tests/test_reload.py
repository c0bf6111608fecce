"""``atasks run --reload``: a server restarted, once drained, when a module it loaded changes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from servers import until, wait_until_served

import atasks
from atasks import atask

pytestmark = pytest.mark.timeout(120)

MODULE = """
import asyncio
from pathlib import Path

import atasks


@atasks.atask
async def version() -> int:
    return {version}


@atasks.atask
async def slow(marker: str) -> str:
    with open(marker, "a") as runs:
        runs.write("run\\n")
    await asyncio.sleep(3)
    return "finished"
"""


def _log(path: Path) -> str:
    return path.read_text(errors="replace")


def _start(module: Path, url: str, log: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``atasks run MODULE --mode server --reload`` in the module's directory."""
    argv = [sys.executable, "-m", "atasks", "run", module.name, "--mode", "server", "--reload"]
    with open(log, "wb") as out:
        return subprocess.Popen(
            [*argv, "--url", url, *flags],
            cwd=module.parent,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


async def test_a_changed_module_is_served_anew_after_a_drain(amqp_url: str, tmp_path: Path) -> None:
    name = f"reloadable_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text(MODULE.format(version=1))
    (tmp_path / "unrelated.py").write_text("X = 1\n")
    log = tmp_path / "server.log"
    server = _start(module, amqp_url, log)
    serving = "serving; reloads when its modules change"
    try:

        @atask(name=f"{name}.version")
        async def version() -> int: ...

        @atask(name=f"{name}.slow")
        async def slow(marker: str) -> str: ...

        await until(lambda: _log(log).count(serving) == 1, within=60)
        await atasks.setup("amqp", url=amqp_url)
        assert await wait_until_served(version) == 1

        marker = tmp_path / "slow-started"
        in_flight = asyncio.ensure_future(slow(str(marker)))
        await until(marker.exists)
        (tmp_path / "unrelated.py").write_text("X = 2\n")  # not loaded by the server
        await until(lambda: "unrelated.py changed, which the server did not load" in _log(log))
        module.write_text(MODULE.format(version=2))
        assert await in_flight == "finished"
        assert marker.read_text() == "run\n"  # drained: not cut off and run again
        await until(lambda: _log(log).count(serving) == 2, within=60)
        reloads = [line for line in _log(log).splitlines() if "atasks.reload: reloading:" in line]
        assert len(reloads) == 1, _log(log)
        assert module.name in reloads[0]
        assert "unrelated.py" not in reloads[0]
        assert await version() == 2
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            code = server.wait()
        print(_log(log)[-5000:])
    assert code == 0, _log(log)
    assert "reloading:" in _log(log)


def test_reload_is_for_one_server(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from atasks.cli import main

    module = tmp_path / "quiet.py"
    module.write_text("")
    for extra, why in (
        ([], "--reload runs one server"),
        (["--mode", "server", "--workers", "2"], "--reload runs one server"),
    ):
        done = CliRunner().invoke(main, ["run", str(module), "--reload", *extra])
        assert done.exit_code == 2, done.output
        assert why in done.output


async def test_the_endpoints_answer_again_after_a_reload(amqp_url: str, tmp_path: Path) -> None:
    from test_health import free_port, get, status_becomes

    name = f"reloadable_{uuid.uuid4().hex[:8]}"
    module = tmp_path / f"{name}.py"
    module.write_text(MODULE.format(version=1))
    log = tmp_path / "server.log"
    health, metrics = free_port(), free_port()
    ports = ["--health-port", str(health), "--metrics-port", str(metrics)]
    server = _start(module, amqp_url, log, *ports)
    serving = "serving; reloads when its modules change"
    try:

        @atask(name=f"{name}.version")
        async def version() -> int: ...

        await until(lambda: _log(log).count(serving) == 1, within=60)
        await status_becomes(health, "/readyz", 200)
        await atasks.setup("amqp", url=amqp_url)
        assert await wait_until_served(version) == 1
        status, body = await get(metrics, "/metrics")
        assert status == 200
        assert f"{name}.version" in body
        module.write_text(MODULE.format(version=2))
        await until(lambda: _log(log).count(serving) == 2, within=60)
        await status_becomes(health, "/readyz", 200)  # the new server listens on the same port
        assert (await get(metrics, "/metrics"))[0] == 200
        assert await version() == 2
        assert "address already in use" not in _log(log).lower()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        try:
            code = server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            code = server.wait()
    assert code == 0, _log(log)
    assert (await get(health, "/livez"))[0] == 0  # closed with the server
