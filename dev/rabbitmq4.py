#!/usr/bin/env python3
"""RabbitMQ 4.x for the tests: Debian sid's rabbitmq-server in a root directory, built once.

    python3 dev/rabbitmq4.py            # build it unless already cached; print its path
    python3 dev/rabbitmq4.py --rebuild  # build it anew (the old one is replaced at the end)

The root is a minimal sid made by mmdebstrap with rabbitmq-server installed (about 250 MB and
20-40 s), in ``${XDG_CACHE_HOME:-~/.cache}/atasks/rabbitmq-sid``. It is built in a temporary
directory beside that path and renamed into place only once complete, so an interrupted build
is never used; ``.atasks-rabbitmq-version`` in it records the package's version, and marks it
complete. ``RabbitNode(root=...)`` (atasks/testing/rabbitnode.py) runs its broker. Needs
root (mmdebstrap, chroot) and the mmdebstrap package. ``ATASKS_SID_MIRROR`` picks a Debian
mirror other than mmdebstrap's default; ``ATASKS_RABBITMQ4_ROOT`` points the tests at a root
somewhere else.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

VERSION_FILE = ".atasks-rabbitmq-version"
SERVER = "usr/lib/rabbitmq/bin/rabbitmq-server"


def default_path() -> Path:
    """Where the root is cached: ``${XDG_CACHE_HOME:-~/.cache}/atasks/rabbitmq-sid``."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "atasks" / "rabbitmq-sid"


def version(root: Path) -> str | None:
    """The RabbitMQ package version recorded in a complete root; None if it is not one."""
    try:
        recorded = (root / VERSION_FILE).read_text().strip()
    except OSError:
        return None
    return recorded if recorded and (root / SERVER).exists() else None


def find() -> Path | None:
    """The root the tests use: ``$ATASKS_RABBITMQ4_ROOT`` if set, else the cached one; None
    unless it is complete."""
    root = Path(os.environ.get("ATASKS_RABBITMQ4_ROOT") or default_path())
    return root if version(root) else None


def build(path: Path, rebuild: bool = False) -> Path:
    """Build the root at ``path`` unless a complete one is there (or ``rebuild``)."""
    path = path.absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _locked(path.parent / f"{path.name}.lock"):
        for stale in path.parent.glob(f"{path.name}.tmp-*"):  # interrupted builds
            _remove(stale)
        if version(path) and not rebuild:
            return path
        if os.geteuid() != 0:
            sys.exit("building the RabbitMQ 4.x root needs root (mmdebstrap, then chroot)")
        new = Path(tempfile.mkdtemp(prefix=f"{path.name}.tmp-", dir=path.parent))
        try:
            new.chmod(0o755)  # it becomes /
            _mmdebstrap(new)
            installed = subprocess.run(
                [
                    "dpkg-query",
                    f"--admindir={new}/var/lib/dpkg",
                    "-W",
                    "-f=${Version}",
                    "rabbitmq-server",
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.strip()
            (new / VERSION_FILE).write_text(f"{installed}\n")
            if path.exists():  # --rebuild: the old root goes only once the new one is ready
                old = path.parent / f"{path.name}.tmp-old-{os.getpid()}"
                path.rename(old)
                new.rename(path)
                _remove(old)
            else:
                new.rename(path)
        except BaseException:
            _remove(new)
            raise
    return path


def _mmdebstrap(target: Path) -> None:
    """A minimal sid with rabbitmq-server in ``target``; mmdebstrap's output goes to stderr."""
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        # A clock ahead of the mirror's Valid-Until must not stop the build.
        '--aptopt=Acquire::Check-Valid-Until "false"',
        "--include=rabbitmq-server",
        "sid",
        str(target),
    ]
    if mirror := os.environ.get("ATASKS_SID_MIRROR"):
        argv.append(mirror)
    subprocess.run(argv, check=True, stdout=sys.stderr)


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive lock: two test runs at once build the root once."""
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _remove(tree: Path) -> None:
    """Remove a root directory, unmounting what is mounted in it first (/proc, or what an
    interrupted mmdebstrap left): never delete through a mount point."""
    prefix = f"{tree.absolute()}/"
    with open("/proc/self/mounts") as mounts:
        inside = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    for mount_point in sorted(inside, key=len, reverse=True):
        subprocess.run(["umount", mount_point], check=True)
    shutil.rmtree(tree)


def main() -> None:
    """Build or reuse the root; its path on stdout, what happened on stderr."""
    parser = argparse.ArgumentParser(description="Build or reuse Debian sid's RabbitMQ 4.x root.")
    parser.add_argument("--rebuild", action="store_true", help="build it anew")
    parser.add_argument("--path", type=Path, default=default_path(), help="where the root goes")
    args = parser.parse_args()
    cached = version(args.path) and not args.rebuild
    t0 = time.monotonic()
    root = build(args.path, args.rebuild)
    how = "cached" if cached else f"built in {time.monotonic() - t0:.0f}s"
    print(f"rabbitmq-server {version(root)} from Debian sid in {root} ({how})", file=sys.stderr)
    print(root)


if __name__ == "__main__":
    main()
