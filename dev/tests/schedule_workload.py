"""A schedule that the schedule tests serve with ``atasks run``: every second, it appends its
call id (``<schedule>@<due time>``) and its server's pid to the file ``$ATASKS_TEST_TICKS``."""

from __future__ import annotations

import datetime as dt
import os

import atasks
from atasks import schedule


@schedule(interval=dt.timedelta(seconds=1), name="tick")
async def tick() -> None:
    with open(os.environ["ATASKS_TEST_TICKS"], "a") as ticks:  # noqa: ASYNC230 - a line
        ticks.write(f"{atasks.current_call_id()} {os.getpid()}\n")
