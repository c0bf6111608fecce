"""What a server's bounded memories cost a call once full: the replies it keeps for callers
that reconnect (``Sent``) and its memories of kept replies and of cancelled or moved calls
(``Memory``), each bounded at 100,000.

    .venv/bin/python dev/bench/memories.py [--puts 300000]

Each is filled to twice its bound and timed per put in slices: the first slice (filling, well
under the bound) is the baseline and every later one is reported against it. A memory that
forgets its oldest at a constant cost stays at or under 1x; one that slows down as it forgets (a
dict deleting its first key walks the slots freed before it) climbs, slice after slice.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from atasks.transport.backends.amqp.server.policies import Memory
from atasks.transport.backends.amqp.server.resuming import RESUMABLE_BYTES, RESUMABLE_MAX, Sent
from atasks.transport.messages import Reply

SLICES = 6


def _slices(put: Callable[[int], None], puts: int) -> list[float]:
    """µs per put in each of ``SLICES`` slices of ``puts`` puts."""
    size = puts // SLICES
    timings = []
    for first in range(0, size * SLICES, size):
        started = time.perf_counter()
        for number in range(first, first + size):
            put(number)
        timings.append((time.perf_counter() - started) / size * 1e6)
    return timings


def measure(puts: int) -> dict[str, list[float]]:
    body = b"x" * 120
    replies = [
        Reply(call_id=f"call-{number}", ok=True, content_type="pickle", body=body)
        for number in range(puts)
    ]
    sent = Sent(RESUMABLE_MAX, RESUMABLE_BYTES, 3600.0)
    memory: Memory[str, None] = Memory(RESUMABLE_MAX, 3600.0)
    keys = [reply.call_id for reply in replies]
    return {
        "Sent.put": _slices(lambda number: sent.put(replies[number]), puts),
        "Memory.put": _slices(lambda number: memory.put(keys[number], None), puts),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--puts", type=int, default=3 * RESUMABLE_MAX, help="puts in all")
    parser.add_argument("--json", action="store_true", help="the numbers as JSON")
    args = parser.parse_args()
    results = measure(args.puts)
    if args.json:
        print(json.dumps(results))
        return
    size = args.puts // SLICES
    print(f"µs per put, {SLICES} slices of {size:,} puts; bound {RESUMABLE_MAX:,}")
    for name, timings in results.items():
        line = "  ".join(f"{t:.2f} ({t / timings[0]:.1f}x)" for t in timings)
        print(f"{name:<11} {line}")


if __name__ == "__main__":
    main()
