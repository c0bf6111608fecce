"""Hundreds of atasks, so that a server's start-up (declaring and consuming a queue for each)
takes a while: test_startup.py cuts its connection or stops it meanwhile."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from atasks import ATask, atask

COUNT = 200


@atask(name="many.pid")
async def pid() -> int:
    """Registered first."""
    return os.getpid()


@atask(name="many.mark_then_sleep")
async def mark_then_sleep(marker: str, seconds: float) -> int:
    """Registered second. Writes this server's pid to ``marker``, then sleeps."""
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 - tiny, and a test
    await asyncio.sleep(seconds)
    return os.getpid()


def _numbered(number: int) -> ATask:
    async def plus(value: int) -> int:
        return value + number

    return atask(name=f"many.plus_{number:03d}")(plus)


NUMBERED = [_numbered(number) for number in range(COUNT)]
globals().update({f"plus_{number:03d}": found for number, found in enumerate(NUMBERED)})
