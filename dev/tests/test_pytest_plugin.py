"""The pytest plugin (``atasks.pytest_plugin``): the docs' test file runs as written against
a real broker it starts, loopback tests touch no broker machinery, and a server that cannot
start is reported with its log."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

from atasks.testing.server import ServerProcess

pytestmark = pytest.mark.timeout(180)

PAGE = (REPO / "docs/getting-started/testing.md").read_text()


def _docs_file(name: str) -> str:
    """The page's block marked ``<!-- file: NAME -->``."""
    found = re.search(rf"<!-- file: {re.escape(name)} -->\n```python\n(.*?)```", PAGE, re.DOTALL)
    assert found is not None, f"docs/getting-started/testing.md has no block for {name}"
    return found.group(1)


def _pytest(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """pytest in a subprocess, in ``directory``, as a user would run it there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ATASKS_"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )


def test_the_docs_test_file_runs_against_rabbitmq(tmp_path: Path) -> None:
    for name in ("greetings.py", "test_greetings.py"):
        (tmp_path / name).write_text(_docs_file(name))
    done = _pytest(tmp_path, "--setup-show")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
    # The node started once, for the test that asked for it, not for the loopback one.
    assert done.stdout.count("SETUP    S atasks_rabbitmq") == 1
    loopback = done.stdout.index("test_greet_over_loopback")
    assert done.stdout.index("SETUP    S atasks_rabbitmq") > loopback


def test_loopback_tests_start_nothing_and_start_clean(tmp_path: Path) -> None:
    (tmp_path / "test_clean.py").write_text(
        """
import sys

import pytest

import atasks

pytestmark = pytest.mark.asyncio
made = []


@atasks.handler(factory=lambda: made.append(Counter.__new__(Counter)) or made[-1])
class Counter:
    count = 0

    @atasks.atask
    async def bump(self) -> int:
        self.count += 1
        return self.count


@pytest.mark.parametrize("run", [1, 2])
async def test_each_test_gets_a_fresh_namespace(atasks_loopback, run):
    assert await Counter.bump() == 1
    assert len(made) == run
    assert atasks.get_router() is atasks_loopback


def test_no_broker_machinery_was_loaded():
    assert "atasks.testing.rabbitnode" not in sys.modules
    assert "aio_pika" not in sys.modules
"""
    )
    done = _pytest(tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 passed" in done.stdout


async def test_a_server_that_cannot_start_is_reported_with_its_log(
    atasks_server: object, amqp_url: str, tmp_path: Path
) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text("import atasks\nraise ValueError('no config here')\n")
    start = atasks_server
    with pytest.raises(RuntimeError, match=r"(?s)exited before it served.*no config here"):
        await start(str(broken), amqp_url, within=60)  # type: ignore[operator]


def test_stopping_a_server_never_started_is_a_no_op(tmp_path: Path) -> None:
    assert ServerProcess("x.py", "amqp://127.0.0.1:1/", tmp_path / "log").stop() == 0
