"""Run N server processes, restart any that dies, and stop them all on SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time

from atasks.runner import WORKER_ENV

log = logging.getLogger("atasks.supervisor")

RESTART_DELAY_MAX = 10.0
STOP_TIMEOUT = 60.0


def supervise(workers: int, argv: list[str]) -> int:
    """Keep ``workers`` copies of ``argv`` running until signalled; returns an exit code.

    ``argv`` must run one worker (``--workers 1``). Workers do not inherit ``ATASKS_WORKERS``,
    and ``ATASKS_WORKER`` tells them they are supervised, so none becomes a supervisor itself.
    """
    return asyncio.run(_supervise(workers, argv))


async def _supervise(workers: int, argv: list[str]) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    slots = [asyncio.create_task(_keep_running(slot, argv, stop)) for slot in range(workers)]
    await asyncio.gather(*slots)
    return 0


def worker_environment(slot: int) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key != "ATASKS_WORKERS"}
    env[WORKER_ENV] = str(slot)
    return env


async def _keep_running(slot: int, argv: list[str], stop: asyncio.Event) -> None:
    delay = 0.5
    while not stop.is_set():
        started = time.monotonic()
        # Same process group: killing the supervisor's group kills its workers too. A terminal's
        # Ctrl-C reaches every worker as well as the supervisor's SIGTERM; a worker takes the
        # second signal calmly (its handlers stay installed until it exits).
        process = await asyncio.create_subprocess_exec(*argv, env=worker_environment(slot))
        log.info("worker %d started (pid %d)", slot, process.pid)
        waiter = asyncio.ensure_future(process.wait())
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if stop.is_set():
            if process.returncode is None:
                process.terminate()
            try:
                await asyncio.wait_for(waiter, STOP_TIMEOUT)
            except TimeoutError:
                log.error("worker %d (pid %d) did not stop; killing it", slot, process.pid)
                process.kill()
                await waiter
            log.info("worker %d (pid %d) stopped", slot, process.pid)
            return
        log.error(
            "worker %d (pid %d) died with exit code %s; restarting",
            slot,
            process.pid,
            process.returncode,
        )
        # Back off when a worker dies right after starting, to avoid a restart storm.
        delay = 0.5 if time.monotonic() - started > 30 else min(delay * 2, RESTART_DELAY_MAX)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
