"""Run N server processes, restart any that dies, and stop them all on SIGINT/SIGTERM.

A worker that dies after it started serving, or is killed by a signal, is restarted (with
back-off if it keeps dying young). Workers that exit with an error before they ever serve — a
module that fails to import, a wrong password — are not: after ``workers`` such failures in a
row the supervisor gives up and exits non-zero with the last worker's error, as it does when
stopped after such a failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger("atasks.supervisor")

WORKER_ENV = "ATASKS_WORKER"
"""Set in each supervised worker's environment: a worker never supervises workers itself."""
READY_FD_ENV = "ATASKS_READY_FD"
"""A supervised worker writes a line to this file descriptor once it serves."""

RESTART_DELAY_MAX = 10.0
STOP_TIMEOUT = 60.0
FAILED = 1


class Companion(Protocol):
    """What runs in the supervisor beside its workers (the metrics of all of them)."""

    async def start(self) -> None:
        """Before the first worker starts (its environment is theirs)."""

    def worker_exited(self, pid: int) -> None:
        """A worker process ended."""

    async def stop(self) -> None:
        """After the last worker stopped."""


@dataclass
class Pool:
    """What the workers have shown so far."""

    workers: int
    stop: asyncio.Event
    failures: int = 0  # start-up failures in a row, no worker serving since
    last_error: str = ""
    stop_timeout: float = STOP_TIMEOUT  # then a worker that has not stopped is killed
    companion: Companion | None = None


def supervise(workers: int, argv: list[str], companion: Companion | None = None) -> int:
    """Keep ``workers`` copies of ``argv`` running until signalled; returns an exit code.

    ``argv`` must run one worker (``--workers 1``). Workers do not inherit ``ATASKS_WORKERS``,
    and ``ATASKS_WORKER`` tells them they are supervised, so none becomes a supervisor itself.
    """
    return asyncio.run(_supervise(workers, argv, companion))


async def _supervise(workers: int, argv: list[str], companion: Companion | None = None) -> int:
    loop = asyncio.get_running_loop()
    pool = Pool(workers, asyncio.Event(), companion=companion)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, pool.stop.set)
    if companion is not None:
        await companion.start()
    try:
        slots = [asyncio.create_task(_keep_running(slot, argv, pool)) for slot in range(workers)]
        await asyncio.gather(*slots)
    finally:
        if companion is not None:
            await companion.stop()
    if pool.failures:
        log.error("workers fail at start-up: %s", pool.last_error or "see their output above")
        return FAILED
    return 0


def worker_environment(slot: int, ready_fd: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ATASKS_WORKERS"}
    env[WORKER_ENV] = str(slot)
    env[READY_FD_ENV] = str(ready_fd)
    return env


async def _keep_running(slot: int, argv: list[str], pool: Pool) -> None:
    delay = 0.5
    while not pool.stop.is_set():
        started = time.monotonic()
        ready_read, ready_write = os.pipe()
        # Same process group: killing the supervisor's group kills its workers too. A terminal's
        # Ctrl-C reaches every worker as well as the supervisor's SIGTERM; a worker takes the
        # second signal calmly (its handlers stay installed until it exits).
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env=worker_environment(slot, ready_write),
                pass_fds=(ready_write,),
                stderr=asyncio.subprocess.PIPE,
            )
        finally:
            os.close(ready_write)
        log.info("worker %d started (pid %d)", slot, process.pid)
        assert process.stderr is not None
        relay = asyncio.ensure_future(_relay(process.stderr, pool))
        served = asyncio.ensure_future(_ready(ready_read))
        served.add_done_callback(lambda done: _served(done, pool))
        waiter = asyncio.ensure_future(process.wait())
        stopper = asyncio.ensure_future(pool.stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if pool.stop.is_set():
            if process.returncode is None:
                process.terminate()
            # Not wait_for: on a timeout it would cancel ``waiter``, which is still needed.
            stopped, _ = await asyncio.wait({waiter}, timeout=pool.stop_timeout)
            if not stopped:
                log.error("worker %d (pid %d) did not stop; killing it", slot, process.pid)
                process.kill()
                await waiter
            await relay
            served.cancel()
            log.info("worker %d (pid %d) stopped", slot, process.pid)
            if pool.companion is not None:
                pool.companion.worker_exited(process.pid)
            return
        await relay
        if pool.companion is not None:
            pool.companion.worker_exited(process.pid)
        # Killed by a signal (a poison request, the OOM killer…) or stopped by one (exit 0: a
        # worker stops gracefully on SIGTERM, during its start-up too) is no start-up failure,
        # even before the worker could say it serves: only exiting with an error is.
        if await served or (process.returncode or 0) <= 0:
            log.error(
                "worker %d (pid %d) died with exit code %s; restarting",
                slot,
                process.pid,
                process.returncode,
            )
        else:
            pool.failures += 1
            log.error(
                "worker %d (pid %d) failed at start-up with exit code %s (%d in a row)",
                slot,
                process.pid,
                process.returncode,
                pool.failures,
            )
            if pool.failures >= pool.workers:
                pool.stop.set()  # it will not get better by itself: say why and exit
                return
        # Back off when a worker dies right after starting, to avoid a restart storm.
        delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, RESTART_DELAY_MAX)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await pool.stop.wait()


def _served(ready: asyncio.Future[bool], pool: Pool) -> None:
    if not ready.cancelled() and ready.result():
        pool.failures = 0  # a worker serves: the set-up works


async def _ready(fd: int) -> bool:
    """Whether the worker wrote to its ready pipe before it closed."""
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        return bool(await asyncio.to_thread(pipe.read, 6))


async def _relay(stream: asyncio.StreamReader, pool: Pool) -> None:
    """Pass a worker's stderr on, keeping its last line: the error it died of."""
    while line := await stream.readline():
        sys.stderr.buffer.write(line)
        sys.stderr.flush()
        text = line.decode(errors="replace").strip()
        if text:
            pool.last_error = text
