"""A caller run by another atasks (the previous release's venv, from its own source tree): the
wire it speaks meets this tree's servers. Makes ``count`` calls of ``workload.pid`` at once and
one fire-and-forget ``workload.queued_tally``; prints the results as JSON.

Usage: python previous_client.py URL COUNT TALLY (run in the other release's source tree, so
``dev/tests/workload.py`` is that release's).
"""

from __future__ import annotations

import asyncio
import json
import sys

sys.path.insert(0, "dev/tests")

import workload

import atasks


async def main(url: str, count: int, tally: str) -> None:
    await atasks.setup("amqp", url=url)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(workload.pid() for _ in range(count))), 60
        )
        await workload.queued_tally(tally, "previous", 0)
    finally:
        await atasks.close()
    print(json.dumps(results))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
