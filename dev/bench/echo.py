"""The benchmark's atasks: ``echo`` returns its argument unchanged, ``echo_queued`` is fired
and forgotten, and ``STREAMS[window]`` yields a value ``count`` times through a stream of that
window.

Served with ``python -m atasks run dev/bench/echo.py --mode server --url URL -q``; the name is
fixed so that the server (which imports this file as ``echo``) and any client agree on it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from atasks import StreamATask, atask, atask_queue

NAME = "bench.echo"
QUEUED_NAME = "bench.echo-queued"
PAYLOAD = "x" * 100  # the echoed value: a 100-character str
PAYLOAD_BYTES = PAYLOAD.encode()
STREAM_WINDOWS = (16, 64, 256)  # 64: the default


def _stream(window: int) -> StreamATask[[int, str], str]:
    @atask(name=f"bench.items.{window}", window=window)
    async def items(count: int, value: str) -> AsyncIterator[str]:
        """``value``, ``count`` times."""
        for _ in range(count):
            yield value

    return items


# Defined before echo: a server that serves echo has declared their queues.
STREAMS = {window: _stream(window) for window in STREAM_WINDOWS}


@atask(name=NAME)
async def echo(value: str) -> str:
    """Return ``value``."""
    return value


@atask_queue(name=QUEUED_NAME)
async def echo_queued(value: str) -> None:
    """Fire and forget: nothing (the benchmark measures publishing it)."""
