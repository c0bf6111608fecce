"""The package as users get it: ``python -m build`` makes an sdist and a wheel; the wheel
installs into a fresh virtual environment, where atasks imports, ``atasks --help`` runs and a
loopback call works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from conftest import REPO

pytestmark = pytest.mark.timeout(600)

SMOKE = textwrap.dedent(
    """
    import asyncio
    import atasks

    @atasks.atask
    async def add(a: int, b: int) -> int:
        return a + b

    async def main() -> None:
        await atasks.setup()
        print("sum", await add(2, 3))
        await atasks.close()

    asyncio.run(main())
    """
)


def run(*argv: str | Path, cwd: Path) -> str:
    """``argv``'s output; with no ``ATASKS_*`` variables, as on a user's machine."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATASKS_")}
    done = subprocess.run(
        [str(one) for one in argv], cwd=cwd, capture_output=True, text=True, timeout=500, env=env
    )
    assert done.returncode == 0, f"{argv}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist and wheel, built from a copy of the work tree (the build leaves files)."""
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    tracked = run("git", "ls-files", "-z", cwd=REPO).split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    run(sys.executable, "-m", "build", "--outdir", root / "dist", cwd=source)
    return root / "dist"


def test_the_wheel_and_sdist_hold_what_users_need(built: Path) -> None:
    (wheel,) = built.glob("atasks-*.whl")
    (sdist,) = built.glob("atasks-*.tar.gz")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        info = next(name for name in names if name.endswith(".dist-info/METADATA"))
        metadata = Parser().parsestr(archive.read(info).decode())
        entry_points = archive.read(info.replace("METADATA", "entry_points.txt")).decode()
    assert "atasks/py.typed" in names
    static = REPO / "atasks" / "dashboard" / "static"
    page = {f"atasks/dashboard/static/{path.name}" for path in static.iterdir()}
    assert {"index.html", "dashboard.js", "dashboard.css"} <= {p.rsplit("/", 1)[1] for p in page}
    assert page <= names, "the dashboard's page is not all in the wheel"
    assert "django_atasks/management/commands/run_atask.py" in names
    assert not any(name.startswith(("dev/", "examples/")) for name in names)
    assert "atasks = atasks.cli:main" in entry_points
    assert "[pytest11]" in entry_points
    assert "atasks = atasks.pytest_plugin" in entry_points
    classifiers = metadata.get_all("Classifier")
    for version in ("3.11", "3.12", "3.13", "3.14"):
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert metadata["Requires-Python"] == ">=3.11"
    assert metadata["License-Expression"] == "LGPL-3.0-or-later"
    extras = set(metadata.get_all("Provides-Extra"))
    assert {"django", "fastapi", "otel", "prometheus", "reload"} <= extras
    requirements = " ".join(metadata.get_all("Requires-Dist"))
    for tool in ("ruff", "mypy", "build"):  # developer tools: dev/requirements.txt
        assert tool not in requirements
    with tarfile.open(sdist) as archive:
        members = {name.partition("/")[2] for name in archive.getnames()}
    assert {"pyproject.toml", "README.md", "LICENSE", "COPYING", "atasks/py.typed"} <= members


def test_the_wheel_installs_and_works_in_a_fresh_venv(built: Path, tmp_path: Path) -> None:
    (wheel,) = built.glob("atasks-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    run(python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, cwd=tmp_path)
    # From elsewhere than the repository, so that only the installed package can be imported.
    where = run(python, "-c", "import atasks; print(atasks.__file__)", cwd=tmp_path)
    assert where.startswith(str(venv)), where
    assert "Usage: atasks" in run(venv / "bin" / "atasks", "--help", cwd=tmp_path)
    (tmp_path / "smoke.py").write_text(SMOKE)
    assert run(python, "smoke.py", cwd=tmp_path).strip() == "sum 5"
