"""Atasks that the multi-process tests serve with ``atasks run dev/tests/workload.py``."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
import os
import signal
import time
from collections.abc import AsyncIterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import atasks
from atasks import Backoff, Retry, atask, atask_broadcast, atask_queue


@atask
async def pid() -> int:
    return os.getpid()


@atask
async def frozen_objects() -> int:
    """How many objects its server put out of the garbage collector's sight at start-up."""
    return gc.get_freeze_count()


@atask
async def slow_pid(seconds: float) -> int:
    await asyncio.sleep(seconds)
    return os.getpid()


@atask
async def mark_then_sleep(marker: str, seconds: float) -> int:
    """Write this server's pid to ``marker`` (so a test can kill it mid-call), then sleep."""
    Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 - tiny, and a test
    await asyncio.sleep(seconds)
    return os.getpid()


@atask
async def kill_my_server() -> None:
    """Poison: SIGKILLs every server that runs it."""
    os.kill(os.getpid(), signal.SIGKILL)


@atask
async def kill_my_server_after(seconds: float) -> None:
    """Slow poison: SIGKILLs every server that runs it, ``seconds`` after it starts."""
    await asyncio.sleep(seconds)
    os.kill(os.getpid(), signal.SIGKILL)


@atask
async def fanout(depth: int, wide_levels: int) -> int:
    """Nested calls: two children per level for the top ``wide_levels`` levels, then one."""
    if depth == 0:
        return 1
    width = 2 if wide_levels > 0 else 1
    children = [fanout(depth - 1, wide_levels - 1) for _ in range(width)]
    return 1 + sum(await asyncio.gather(*children))


@atask
async def nested(levels: int) -> list[str | None]:
    """A chain of calls; returns the call ids from the innermost out."""
    inner = await nested(levels - 1) if levels > 1 else []
    return [*inner, atasks.current_call_id()]


@atask
async def count_up(steps: int) -> int:
    for step in range(1, steps + 1):
        await atasks.progress(step, steps, f"step {step}")
    return steps


@atask
async def fail_with(message: str) -> None:
    raise LookupError(message)


@atask
async def double_after(value: int, seconds: float, markers: str) -> int:
    """Mark that it runs (a file named ``value`` in ``markers``), sleep, return twice the value."""
    (Path(markers) / str(value)).touch()
    await asyncio.sleep(seconds)
    return 2 * value


@atask
async def blob(size: int) -> bytes:
    return b"x" * size


@atask
async def length(data: bytes) -> int:
    return len(data)


@atask
async def count_run(tally: str, seconds: float) -> int:
    """Add a line to ``tally`` each time it runs, then sleep."""
    with open(tally, "a") as lines:  # noqa: ASYNC230 - tiny, and a test
        lines.write(f"{os.getpid()}\n")
    await asyncio.sleep(seconds)
    return os.getpid()


request_id: ContextVar[str] = atasks.propagate(ContextVar("workload_request_id"))
log = logging.getLogger("workload")


@atask
async def context_seen(levels: int) -> list[str | None]:
    """The propagated request id here, then in each call of a chain of ``levels``."""
    inner = await context_seen(levels - 1) if levels > 1 else []
    return [request_id.get(None), *inner]


@atask
async def whoami() -> dict[str, Any] | None:
    claims = atasks.current_auth()
    return dict(claims) if claims is not None else None


@atask
async def whoami_nested() -> list[dict[str, Any] | None]:
    """The claims here and in an atask awaited here."""
    claims = atasks.current_auth()
    return [dict(claims) if claims is not None else None, await whoami()]


@atask(auth_required=True)
async def protected() -> str:
    return "for authenticated callers"


@atask
async def log_line(text: str) -> str | None:
    """Log ``text`` on the server; returns this call's id."""
    log.info("logged %s", text)
    return atasks.current_call_id()


@atask
async def priority_chain(levels: int) -> list[int | None]:
    """The priority in force here, then in each call of a chain of ``levels``."""
    inner = await priority_chain(levels - 1) if levels > 1 else []
    return [atasks.current_priority(), *inner]


@atask(mechanism="process")
def spin(marker: str, seconds: float) -> list[int]:
    """CPU-bound, in a worker process: write the worker's pid to ``marker``, then spin until a
    file ``<marker>.stop`` exists or ``seconds`` pass; returns the worker's pid and its parent's."""
    Path(marker).write_text(str(os.getpid()))
    stop = Path(marker + ".stop")
    end = time.monotonic() + seconds
    while time.monotonic() < end and not stop.exists():
        sum(range(20_000))
    return [os.getpid(), os.getppid()]


@atask(mechanism="process")
def cpu_sum(n: int) -> list[int]:
    """The sum of ``range(n)`` and the pid of the worker process that computed it."""
    return [sum(range(n)), os.getpid()]


@atask(mechanism="process")
def lookup_in_process(key: str) -> None:
    raise LookupError(key)


@atask(mechanism="process")
def exit_with(code: int) -> None:
    os._exit(code)


@atask(mechanism="process", retry=Retry(attempts=2, backoff=Backoff.constant(0)))
def die_once(marker: str) -> int:
    """Ends its worker process abruptly the first time (no ``marker`` yet), then succeeds."""
    if not Path(marker).exists():
        Path(marker).write_text(str(os.getpid()))
        os._exit(3)
    return os.getpid()


streamed: dict[str, list[Any]] = {}
"""What ``numbers`` made in this process, by token: each item, then ``"closed"``."""


@atask(window=8)
async def numbers(
    token: str, count: int | None, fail_at: int | None = None, pause: float = 0.0
) -> AsyncIterator[int]:
    """0, 1, 2… (``count`` of them, or forever), each ``pause`` seconds after the last;
    ``ValueError`` instead of item ``fail_at``. Records them in ``streamed[token]``."""
    made = streamed.setdefault(token, [])
    try:
        for item in itertools.count() if count is None else range(count):
            if item == fail_at:
                raise ValueError(f"no item {item} today")
            if pause:
                await asyncio.sleep(pause)
            made.append(item)
            yield item
    finally:
        made.append("closed")


@atask(window=256)
async def many(count: int) -> AsyncIterator[int]:
    for item in range(count):
        yield item


@atask(window=4)
async def blobs(marker: str, size: int, count: int) -> AsyncIterator[bytes]:
    """``count`` fresh blobs of ``size`` bytes; appends a line to ``marker`` for each made."""
    with open(marker, "a") as made:  # noqa: ASYNC230 - tiny, and a test
        for item in range(count):
            made.write(f"{item}\n")
            made.flush()
            yield bytes([item % 256]) * size


@atask
async def crash_after(marker: str, count: int) -> AsyncIterator[int]:
    """Writes this server's pid to ``marker`` (a line per run), yields ``count`` items, then
    SIGKILLs its server."""
    with open(marker, "a") as runs:  # noqa: ASYNC230 - tiny, and a test
        runs.write(f"{os.getpid()}\n")
    for item in range(count):
        yield item
    await asyncio.sleep(0.5)  # the items on their way out first (a test may also see fewer)
    os.kill(os.getpid(), signal.SIGKILL)
    yield count


@atask_queue
async def queued_tally(tally: str, token: str, seconds: float) -> None:
    """Fire and forget: add ``start <token> <pid>`` to ``tally``, sleep, add ``done …``."""
    with open(tally, "a") as lines:  # noqa: ASYNC230 - tiny, and a test
        lines.write(f"start {token} {os.getpid()}\n")
    await asyncio.sleep(seconds)
    with open(tally, "a") as lines:  # noqa: ASYNC230 - tiny, and a test
        lines.write(f"done {token} {os.getpid()}\n")


@atask_queue(retry=Retry(attempts=2, backoff=Backoff.constant(0)))
async def queued_fail(message: str) -> None:
    raise LookupError(message)


@atask_broadcast
async def broadcast_tally(tally: str, token: str) -> None:
    """Every server: add ``<token> <pid>`` to ``tally``."""
    with open(tally, "a") as lines:  # noqa: ASYNC230 - tiny, and a test
        lines.write(f"{token} {os.getpid()}\n")


@atask
async def ready() -> int:
    """Defined last: servers register atasks in definition order, so once this one is served,
    every atask above has its queue."""
    return os.getpid()


@atask
async def gated(markers: str) -> int:
    """Count its run (a line in ``markers``/runs), wait (60 s at most) until the file
    ``markers``/go exists, touch ``markers``/done, and return how many runs there were."""
    folder = Path(markers)
    with open(folder / "runs", "a") as runs:  # noqa: ASYNC230 - tiny, and a test
        runs.write("run\n")
    async with asyncio.timeout(60):
        while not (folder / "go").exists():
            await asyncio.sleep(0.01)
    (folder / "done").touch()
    return len((folder / "runs").read_text().splitlines())
