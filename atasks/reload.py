"""``atasks run --reload``: run the server in a child process and start it anew, once it has
drained (its graceful stop), whenever the file of a module it loaded changes. For development.

The child writes the files of the modules it loaded to a file named in ``RELOAD_LIST_ENV`` once
it serves (``runner.announce_ready``); a child that failed before that is started again at the
next change of any Python file under the watched directories.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from atasks.supervisor import READY_FD_ENV

log = logging.getLogger("atasks.reload")

RELOAD_LIST_ENV = "ATASKS_RELOAD_LIST"
"""Set in the child's environment: where it lists the files of the modules it loaded."""
STOP_MARGIN = 10.0
"""Seconds, past its grace, that a stopping child has before it is killed."""


def note_loaded() -> None:
    """In a child of ``--reload``: list the files of every module loaded so far."""
    where = os.environ.pop(RELOAD_LIST_ENV, None)
    if where is None:
        return
    files = {getattr(module, "__file__", None) for module in list(sys.modules.values())}
    Path(where).write_text("\n".join(sorted(os.path.realpath(f) for f in files if f)))


def root_of(target: str) -> Path:
    """The directory to watch for ``target`` of ``atasks run``: a file's top package's parent
    (where its module name starts, as ``runner.load`` names it), else the current directory."""
    path = Path(target)
    if not path.is_file():
        return Path.cwd().resolve()
    folder = path.resolve().parent
    while (folder / "__init__.py").is_file():
        folder = folder.parent
    return folder


def run(argv: list[str], roots: Iterable[Path], grace: float) -> int:
    """Run ``argv`` (one server) until SIGINT/SIGTERM, restarting it when its modules change;
    returns the exit code. Needs watchfiles (the ``reload`` extra)."""
    try:
        import watchfiles  # noqa: F401
    except ImportError:
        raise ImportError("--reload needs watchfiles: pip install 'atasks[reload]'") from None
    return asyncio.run(_reload(argv, sorted(set(roots)), grace))


async def _reload(argv: list[str], roots: list[Path], grace: float) -> int:
    from watchfiles import PythonFilter, awatch

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    changes: asyncio.Queue[set[str]] = asyncio.Queue()

    async def watch() -> None:
        async for batch in awatch(*roots, watch_filter=PythonFilter(), stop_event=stop):
            changes.put_nowait(_real({path for _, path in batch}))

    watcher = asyncio.ensure_future(watch())
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # we say what changed
    log.info("watching %s for changes", ", ".join(map(str, roots)))
    code = 0
    with tempfile.TemporaryDirectory(prefix="atasks-reload-") as scratch:
        listing = Path(scratch) / "loaded"
        try:
            while not stop.is_set():
                child = await _start(argv, listing)
                ready = asyncio.ensure_future(_serving(child, listing))
                changed = await _until_change(child, changes, stop, ready)
                ready.cancel()
                await asyncio.gather(ready, return_exceptions=True)
                os.close(child.ready_fd)
                if changed is not None:
                    log.info(
                        "reloading: %s changed; stopping the server (pid %d) once its calls finish",
                        _names(changed),
                        child.process.pid,
                    )
                code = await _stop(child, grace)
                if changed is None:
                    break
        finally:
            stop.set()
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return code


class _Child:
    def __init__(self, process: asyncio.subprocess.Process, ready_fd: int) -> None:
        self.process = process
        self.ready_fd = ready_fd
        self.loaded: set[str] = set()


async def _start(argv: list[str], listing: Path) -> _Child:
    _forget(listing)
    ready_read, ready_write = os.pipe()
    env = {**os.environ, READY_FD_ENV: str(ready_write), RELOAD_LIST_ENV: str(listing)}
    try:
        # Same process group: a terminal's Ctrl-C reaches it too, and it drains.
        process = await asyncio.create_subprocess_exec(*argv, env=env, pass_fds=(ready_write,))
    except BaseException:
        os.close(ready_read)
        raise
    finally:
        os.close(ready_write)
    return _Child(process, ready_read)


async def _serving(child: _Child, listing: Path) -> None:
    """Once the child serves: read what it loaded, and say it serves."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(child.ready_fd, wake)
    try:
        await readable
    finally:
        loop.remove_reader(child.ready_fd)
    if os.read(child.ready_fd, 6):
        child.loaded = _loaded(listing)
        log.info("server (pid %d) serving; reloads when its modules change", child.process.pid)


async def _until_change(
    child: _Child,
    changes: asyncio.Queue[set[str]],
    stop: asyncio.Event,
    ready: asyncio.Future[None],
) -> set[str] | None:
    """The files changed that call for a new child; ``None`` once stopped. A child that exits by
    itself is started again at the next change of any watched file."""
    exited = asyncio.ensure_future(child.process.wait())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        while True:
            got = asyncio.ensure_future(changes.get())
            await asyncio.wait({got, exited, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                got.cancel()
                return None
            if not got.done():  # the child exited: wait for a change to any watched file
                log.error(
                    "server (pid %d) exited with code %s; waiting for a change to start again",
                    child.process.pid,
                    child.process.returncode,
                )
                child.loaded = set()
                await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if stop.is_set():
                    got.cancel()
                    return None
                return got.result()
            changed = got.result()
            if not child.loaded:  # it has not said what it loaded (yet): any change counts
                return changed
            if changed & child.loaded:
                return changed & child.loaded
            log.info("not reloading: %s changed, which the server did not load", _names(changed))
    finally:
        stopped.cancel()
        exited.cancel()


async def _stop(child: _Child, grace: float) -> int:
    """SIGTERM the child (it stops taking calls and finishes those in progress within its
    grace), then SIGKILL it if it is still there; its exit code."""
    process = child.process
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            async with asyncio.timeout(grace + STOP_MARGIN):
                await process.wait()
        except TimeoutError:
            log.error("server (pid %d) did not stop; killing it", process.pid)
            process.kill()
            await process.wait()
    return process.returncode or 0


def _forget(listing: Path) -> None:
    listing.unlink(missing_ok=True)


def _loaded(listing: Path) -> set[str]:
    """The files the child listed (none if it did not)."""
    try:
        return set(listing.read_text().splitlines())
    except FileNotFoundError:
        return set()


def _real(paths: set[str]) -> set[str]:
    """Paths as the child lists its modules' files: symbolic links resolved."""
    return {os.path.realpath(path) for path in paths}


def _names(paths: set[str]) -> str:
    return ", ".join(sorted(paths))
