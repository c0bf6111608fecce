"""``python dev/tests/lock_holder.py URL MARKER``: take lock ``test-lock``, write this process's
pid to MARKER, and hold it until killed."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import atasks


async def main(url: str, marker: str) -> None:
    await atasks.setup("amqp", url=url)
    async with atasks.lock("test-lock"):
        Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 - tiny, and a test
        await asyncio.sleep(600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
