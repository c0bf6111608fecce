"""Atasks served by ``atasks run dev/tests/limits_workload.py`` in test_fleet_limits.py."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from atasks import atask, atask_queue


@atask
async def ready() -> int:
    return os.getpid()


def _append(path: str, line: str) -> None:
    with open(path, "a") as log:  # one short line per write: appends do not interleave
        log.write(line + "\n")


def _record(path: str, started: float) -> None:
    _append(path, f"{os.getpid()} {started:.6f} {time.time():.6f}")


@atask(limit=2)
async def limited(path: str, seconds: float) -> int:
    """Sleep ``seconds``, then append this run's pid, start and end to ``path``."""
    started = time.time()
    await asyncio.sleep(seconds)
    _record(path, started)
    return os.getpid()


@atask(limit=1)
async def solo(marker: str, seconds: float) -> int:
    """The first run writes its pid to ``marker`` and sleeps ``seconds`` (to be killed); any
    other run returns at once."""
    if Path(marker).exists():  # noqa: ASYNC240
        return os.getpid()
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 - tiny, and a test
    await asyncio.sleep(seconds)
    return os.getpid()


@atask_queue
async def stamp(path: str) -> None:
    """Append the time it runs at to ``path``."""
    _append(path, f"{time.time():.6f}")


@atask
async def now() -> float:
    return time.time()


@atask(rate="10/s")
async def paced(path: str) -> None:
    """Append the time it starts at to ``path``."""
    _append(path, f"{time.time():.6f}")
