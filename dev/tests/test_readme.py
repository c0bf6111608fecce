"""The README's complete programs run as written, and its test command is what CI runs."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import REPO

README = (REPO / "README.md").read_text()
PROGRAMS = [
    block
    for block in re.findall(r"```python\n(.*?)```", README, re.DOTALL)
    if "asyncio.run(" in block
]


def test_the_readme_has_programs() -> None:
    assert PROGRAMS


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.splitlines()[0][:40])
def test_readme_program_runs(program: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout


def test_ci_runs_the_readme_test_command() -> None:
    command = re.search(r"```bash\n(\./dev/test\.sh)\n```", README)
    assert command is not None
    assert command.group(1) in (REPO / ".ci/run").read_text().splitlines()
