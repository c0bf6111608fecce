"""The supervisor of ``atasks run --workers N``, driven in this process with a stand-in worker."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

import pytest
from servers import alive, until

from atasks.supervisor import READY_FD_ENV, Pool, _keep_running

# A worker that says it serves, names its pid on stderr, and then ignores SIGTERM.
STUBBORN = f"""
import os, signal, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
os.write(int(os.environ["{READY_FD_ENV}"]), b"ready")
print(f"stubborn {{os.getpid()}}", file=sys.stderr, flush=True)
time.sleep(120)
"""

# A worker stopped by a signal during its start-up (it exits 0 before saying it serves); started
# again, it serves.
STOPPED_ONCE = f"""
import os, sys, time
marker = sys.argv[1]
if not os.path.exists(marker):
    open(marker, "w").close()
    sys.exit(0)
os.write(int(os.environ["{READY_FD_ENV}"]), b"ready")
print(f"serving {{os.getpid()}}", file=sys.stderr, flush=True)
time.sleep(120)
"""


async def test_a_worker_that_ignores_sigterm_is_killed_and_reaped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pool = Pool(workers=1, stop=asyncio.Event(), stop_timeout=0.5)
    slot = asyncio.create_task(_keep_running(0, [sys.executable, "-c", STUBBORN], pool))
    await until(lambda: pool.last_error.startswith("stubborn "))
    pid = int(pool.last_error.split()[1])
    with caplog.at_level(logging.ERROR, logger="atasks.supervisor"):
        pool.stop.set()
        async with asyncio.timeout(30):
            await slot  # returns: neither hangs nor raises
    assert f"worker 0 (pid {pid}) did not stop; killing it" in caplog.text
    assert not alive(pid)  # killed and reaped, not left a zombie
    assert pool.failures == 0


async def test_a_worker_stopped_during_its_start_up_is_started_again(tmp_path: Path) -> None:
    """Exit 0 before it serves is a graceful stop (a SIGTERM to that worker alone), not a
    start-up failure: with one worker, counting it would stop the whole pool."""
    pool = Pool(workers=1, stop=asyncio.Event(), stop_timeout=5)
    command = [sys.executable, "-c", STOPPED_ONCE, str(tmp_path / "stopped")]
    slot = asyncio.create_task(_keep_running(0, command, pool))
    await until(lambda: pool.last_error.startswith("serving ") or slot.done(), within=30)
    assert not slot.done(), "the pool gave up on a worker stopped during its start-up"
    assert pool.failures == 0
    pool.stop.set()
    async with asyncio.timeout(30):
        await slot
