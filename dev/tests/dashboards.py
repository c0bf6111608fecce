"""Run the dashboard in the test's own event loop, on a free loopback port, and what the
dashboard tests share: their namespace and atasks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from atasks import atask, atask_queue, schedule
from atasks.dashboard.app import Server
from atasks.dashboard.board import Board
from atasks.dashboard.command import listen

NS = "dashtest"


@atask(namespace=NS)
async def add(a: int, b: int) -> int:
    return a + b


@atask(namespace=NS)
async def outer(n: int) -> int:
    """Makes ``n`` nested calls of ``add``."""
    total = 0
    for index in range(n):
        total = await add(total, index)
    return total


@atask_queue(namespace=NS)
async def flaky(marker: str) -> None:
    """Fails (and, being fire and forget, becomes a dead letter) until ``marker`` exists; then
    writes ``<marker>.done``."""
    path = Path(marker)
    if not path.exists():  # noqa: ASYNC240 - a stat
        raise RuntimeError(f"no {marker} yet")
    path.with_suffix(".done").write_text("ran")


@schedule(cron="0 3 * * *", tz="UTC", name="nightly", namespace=NS)
async def nightly() -> None:
    """Due at 03:00 UTC: listed with its next due time, never fired by a test."""


@asynccontextmanager
async def dashboard_at(url: str, refresh: float = 0.5) -> AsyncIterator[str]:
    """The dashboard of ``NS`` on ``url``, served here until the block ends: its base URL."""
    board = Board(url, NS, refresh=refresh)
    sock = listen("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = Server(board)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(30):
            while not server.started:
                if serving.done():
                    serving.result()  # raises what stopped it
                await asyncio.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        async with asyncio.timeout(30):
            await serving
        sock.close()
