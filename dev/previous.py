"""The previous release of atasks, for the tests where versions meet: built once into
``.venv-previous`` from this repository's own history (the commit ``dev/previous_release``
names), its source tree in ``.venv-previous/src``. Prints the venv's path.

Run by the fixture ``previous`` (dev/tests/conftest.py); rebuilt when the commit changes.
"""

from __future__ import annotations

import fcntl
import io
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv-previous"


def commit() -> str:
    return (REPO / "dev" / "previous_release").read_text().split()[0]


def build() -> Path:
    """The previous release's venv, built if missing or of another commit (under a lock, so
    test processes running at once build it once)."""
    wanted = commit()
    VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(REPO / ".venv-previous.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = VENV / "built-from"
        if marker.exists() and marker.read_text() == wanted:
            return VENV
        shutil.rmtree(VENV, ignore_errors=True)
        archive = subprocess.run(
            ["git", "-C", str(REPO), "archive", "--format=tar", wanted],
            check=True,
            capture_output=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(VENV / "src", filter="data")
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(VENV / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, "--disable-pip-version-check", str(VENV / "src")], check=True)
        marker.write_text(wanted)
    return VENV


if __name__ == "__main__":
    print(build())
