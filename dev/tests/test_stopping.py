"""``atasks.stopping.Stop``: the first SIGINT or SIGTERM stops what a server is doing, start-up
included, and waits for it to undo itself; without one, the work's outcome is returned."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from atasks.stopping import Stop


async def test_a_signal_cancels_the_work_and_waits_for_its_clean_up() -> None:
    stop = Stop()
    started, undone = asyncio.Event(), asyncio.Event()

    async def start_up() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0)  # its clean-up awaits too
            undone.set()

    async def signal_once_started() -> None:
        await started.wait()
        os.kill(os.getpid(), signal.SIGTERM)

    signalling = asyncio.ensure_future(signal_once_started())
    assert not await asyncio.wait_for(stop.unless_stopped(start_up()), 10)
    await signalling
    assert undone.is_set()
    assert stop.by == "SIGTERM"
    os.kill(os.getpid(), signal.SIGINT)  # a second signal: still handled, still SIGTERM's stop
    await asyncio.wait_for(stop.event.wait(), 10)
    assert stop.by == "SIGTERM"


async def test_without_a_signal_the_work_finishes_or_fails() -> None:
    stop = Stop()

    async def fails() -> None:
        raise ValueError("bad configuration")

    assert await stop.unless_stopped(asyncio.sleep(0))
    with pytest.raises(ValueError, match="bad configuration"):
        await stop.unless_stopped(fails())
    assert not stop.requested
