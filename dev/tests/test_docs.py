"""The README and the docs site: the site builds with ``mkdocs build --strict``, its generated
reference is current, and every code block runs as written or is marked as a fragment.

The rule for a fenced block in README.md and docs/**.md:

- ``python``: a complete program, run here as written; it must print something.
- after ``<!-- file: NAME -->``: one file of a page's multi-file example, which a test of that
  page writes out and runs (``FILE_PAGES`` lists those pages, so no such file goes untested).
- after ``<!-- fragment -->``: a piece of something larger (or a command for another machine);
  checked where that is cheap (Python compiles, YAML loads), not run.
- ``text``: what a program or command prints, or a synopsis; not code.
- after ``<!-- command: NAME -->``: a command a test finds by that name and checks or runs.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from atasks.pytest_plugin import ServerFactory
from atasks.testing.rabbitnode import RabbitNode

sys.path.insert(0, str(REPO / "dev"))
import docsgen

PAGES = sorted([REPO / "README.md", *(REPO / "docs").rglob("*.md")])
MARKER = re.compile(r"<!-- (fragment|file: [\w./-]+|command: [\w-]+) -->\n\Z")
FENCE = re.compile(r"^( *)```([\w-]*)\n(.*?)^\1```$", re.DOTALL | re.MULTILINE)
FILE_PAGES = {
    "docs/getting-started/rabbitmq.md",
    "docs/getting-started/testing.md",
    "docs/guides/process-pool.md",
    "docs/guides/dashboard.md",
}
"""Pages whose ``<!-- file: -->`` blocks a test writes out and runs."""


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    language: str
    code: str
    marker: str | None

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"


def blocks(path: Path) -> list[Block]:
    text = path.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()]
        marked = MARKER.search(before, max(0, len(before) - 100))
        marker = marked.group(1) if marked else None
        found.append(
            Block(
                page=str(path.relative_to(REPO)),
                line=before.count("\n") + 1,
                language=match.group(2),
                code=textwrap.dedent(match.group(3)),
                marker=marker,
            )
        )
    return found


ALL = [block for page in PAGES for block in blocks(page)]
PROGRAMS = [b for b in ALL if b.marker is None and b.language == "python"]
FRAGMENTS = [b for b in ALL if b.marker == "fragment"]


def page_files(page: str) -> dict[str, str]:
    """The ``<!-- file: NAME -->`` blocks of a page, by name."""
    return {
        b.marker.removeprefix("file: "): b.code
        for b in blocks(REPO / page)
        if b.marker and b.marker.startswith("file: ")
    }


def command(page: str, name: str) -> str:
    """The block of ``page`` marked ``<!-- command: NAME -->``."""
    for b in blocks(REPO / page):
        if b.marker == f"command: {name}":
            return b.code
    raise AssertionError(f"{page} has no block marked <!-- command: {name} -->")


def test_every_block_is_run_or_marked() -> None:
    unmarked = [b.where for b in ALL if b.marker is None and b.language not in ("text", "python")]
    assert not unmarked, (
        "blocks that are neither a program (python with asyncio.run), output (text), "
        f"nor marked <!-- fragment -->, <!-- file: NAME --> or <!-- command: NAME -->: {unmarked}"
    )
    untested = {b.page for b in ALL if b.marker and b.marker.startswith("file: ")} - FILE_PAGES
    assert not untested, f"file blocks on pages no test runs: {untested}"


def test_the_docs_have_programs() -> None:
    assert len(PROGRAMS) >= 10
    assert any(b.page == "README.md" for b in PROGRAMS)


@pytest.mark.parametrize("block", PROGRAMS, ids=lambda b: b.where)
def test_program_runs(block: Block, tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", block.code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout


@pytest.mark.parametrize("block", FRAGMENTS, ids=lambda b: b.where)
def test_fragment_is_well_formed(block: Block) -> None:
    if block.language == "python":
        compile(block.code, block.where, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    elif block.language == "yaml":
        assert list(yaml.safe_load_all(block.code))


def test_the_site_builds_strictly(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "reference/api/index.html").exists()


def test_the_api_reference_is_current_and_complete() -> None:
    page = docsgen.API_PAGE.read_text()
    assert docsgen.generated_part(page, docsgen.API_MARKERS) == docsgen.api_reference(), (
        "docs/reference/api.md is out of date: run .venv/bin/python dev/docsgen.py"
    )
    import atasks

    named = set(re.findall(r"^### `(\w+)`$", page, re.MULTILINE))
    assert named == set(atasks.__all__)


def test_the_cli_reference_is_current() -> None:
    page = docsgen.CLI_PAGE.read_text()
    assert docsgen.generated_part(page, docsgen.CLI_MARKERS) == docsgen.cli_reference(), (
        "docs/reference/cli.md is out of date: run .venv/bin/python dev/docsgen.py"
    )


def test_the_process_pool_example_runs(tmp_path: Path) -> None:
    page = "docs/guides/process-pool.md"
    for name, code in page_files(page).items():
        (tmp_path / name).write_text(code)
    argv = shlex.split(command(page, "process-pool"))
    assert argv[:3] == ["atasks", "run", "thumbnails.py"]
    done = subprocess.run(
        [sys.executable, "-m", "atasks", *argv[1:]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    *pages, last = done.stdout.splitlines()
    here = int(last.removeprefix("awaited in process "))
    workers = {int(line.rsplit(" ", 1)[1]) for line in pages}
    assert len(pages) == 4
    assert here not in workers
    assert 1 <= len(workers) <= 2


def test_the_readme_is_a_landing_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) < 300
    for page in re.findall(r"\]\((docs/[^)#]+)", readme):
        assert (REPO / page).exists(), page


def test_ci_runs_the_readme_test_command() -> None:
    readme = REPO / "README.md"
    assert command("README.md", "test").strip() == "./dev/test.sh"
    assert "./dev/test.sh" in (REPO / ".ci/run").read_text().splitlines()
    assert command("README.md", "set-up").strip().startswith("./dev/run.sh")
    assert readme.exists()


def test_getting_started_over_rabbitmq(amqp_url: str, tmp_path: Path) -> None:
    """The page's two files and its commands, as a user runs them in two terminals."""
    page = "docs/getting-started/rabbitmq.md"
    for name, code in page_files(page).items():
        (tmp_path / name).write_text(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ATASKS_", "PYTEST_"))}
    env |= {"ATASKS_URL": amqp_url, "PYTHONUNBUFFERED": "1"}
    commands = command(page, "rabbitmq-quickstart").splitlines()
    lines = [line.split("#")[0].strip() for line in commands]
    export, serve, ping, call = [line for line in lines if line]
    key, value = export.removeprefix("export ").split("=", 1)
    env[key] = value
    argv = shlex.split(serve)
    assert argv[:4] == ["atasks", "run", "tasks.py", "--mode"]
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "atasks", *argv[1:]],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        assert ping == "atasks ping"
        deadline = time.monotonic() + 90
        while True:  # each ping waits up to 5 s for a server to answer
            answered = subprocess.run(
                [sys.executable, "-m", "atasks", "ping"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if answered.returncode == 0 or server.poll() is not None:
                break
            assert time.monotonic() < deadline, answered.stderr + log.read_text()
        assert answered.returncode == 0, answered.stderr + log.read_text()
        python, script = shlex.split(call)
        assert (python, script) == ("python", "client.py")
        done = subprocess.run(
            [sys.executable, script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr + log.read_text()
        printed = done.stdout.splitlines()
        assert printed[:3] == [f"image {n} at 128px, by process {server.pid}" for n in (1, 2, 3)], (
            done.stdout
        )
        assert printed[3] != f"called from process {server.pid}"
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            assert server.wait(timeout=60) == 0, log.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()


async def test_the_dashboard_example_runs(
    rabbit_factory: Callable[[Path], RabbitNode],
    atasks_server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The page's shop.py served as its first command says, and order.py called as its third
    says, on a broker of its own (order.py leaves a dead letter in the default namespace)."""
    page = "docs/guides/dashboard.md"
    for name, code in page_files(page).items():
        (tmp_path / name).write_text(code)
    lines = [line.split("#")[0] for line in command(page, "dashboard-example").splitlines()]
    serve, board, order = [shlex.split(line) for line in lines if line.strip()]
    assert serve[:5] == ["atasks", "run", "shop.py", "--mode", "server"]
    assert serve[5] == "--url"
    assert serve[7:] == ["--events"]
    assert board[:2] == ["atasks", "dashboard"]
    assert order[:5] == ["atasks", "run", "order.py", "--mode", "client"]
    node = rabbit_factory(tmp_path / "rabbit")
    node.start()
    monkeypatch.chdir(tmp_path)
    await atasks_server("shop.py", node.url, *serve[7:])
    client = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "atasks", *order[1:5], "--url", node.url],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(client.communicate(), 60)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert client.returncode == 0, err.decode()
    assert out.decode().splitlines() == ["15.5"]  # 9.5 + 3.0 + 3.0
