"""The benchmark's atask: returns its argument unchanged.

Served with ``python -m atasks run dev/bench/echo.py --mode server --url URL -q``; the name is
fixed so that the server (which imports this file as ``echo``) and any client agree on it.
"""

from __future__ import annotations

from atasks import atask, atask_queue

NAME = "bench.echo"
QUEUED_NAME = "bench.echo-queued"
PAYLOAD = "x" * 100  # the echoed value: a 100-character str
PAYLOAD_BYTES = PAYLOAD.encode()


@atask(name=NAME)
async def echo(value: str) -> str:
    """Return ``value``."""
    return value


@atask_queue(name=QUEUED_NAME)
async def echo_queued(value: str) -> None:
    """Fire and forget: nothing (the benchmark measures publishing it)."""
