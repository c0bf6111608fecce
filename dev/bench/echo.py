"""The benchmark's atask: returns its argument unchanged.

Served with ``python -m atasks run dev/bench/echo.py --mode server --url URL -q``; the name is
fixed so that the server (which imports this file as ``echo``) and any client agree on it.
"""

from __future__ import annotations

from atasks import atask

NAME = "bench.echo"


@atask(name=NAME)
async def echo(value: str) -> str:
    """Return ``value``."""
    return value
