"""The command line both reference servers share (``baseline.py``, ``patterns.py``): ``--url``
and ``--queue-type``, then ``serve`` until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import Awaitable, Callable

Serve = Callable[[str, asyncio.Event, str], Awaitable[None]]
"""``serve(url, stop, queue_type)``: answer calls until ``stop`` is set."""


def serve_main(serve: Serve, description: str) -> None:
    """Parse the command line and run ``serve`` until SIGINT or SIGTERM."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--url", required=True, help="AMQP URL of the broker")
    parser.add_argument("--queue-type", choices=["quorum", "classic"], default="quorum")
    args = parser.parse_args()
    asyncio.run(_until_signalled(serve, args.url, args.queue_type))


async def _until_signalled(serve: Serve, url: str, queue_type: str) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await serve(url, stop, queue_type)
