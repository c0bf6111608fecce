"""The supervisor of ``atasks run --workers N``, driven in this process with a stand-in worker."""

from __future__ import annotations

import asyncio
import logging
import sys

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
