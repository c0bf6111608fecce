"""Consumers whose deliveries are taken in aiormq's channel reader, not a turn of the loop later.

aiormq wraps a consumer callback that is not a coroutine function in one of its own and runs
that in a new task per delivery, so a plain function's work waits for the next turn of the
loop. A callback installed by ``consume_in_reader`` is called by the reader itself, as the
delivery is read; the coroutine it returns still runs in aiormq's task per delivery
(``nothing`` when there is nothing left to do). It must be quick and must not raise: an
exception would close the channel.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp.commands import Basic

# A consumer callback: called with each delivery, it returns the coroutine aiormq's task runs.
OnMessage = Callable[[DeliveredMessage], Coroutine[Any, Any, None]]


async def nothing() -> None:
    """What aiormq's task per delivery runs when the delivery was taken in its reader."""


async def consume_in_reader(
    channel: aiormq.abc.AbstractChannel, queue: str, callback: OnMessage, *, no_ack: bool = False
) -> Basic.ConsumeOk:
    """Consume ``queue`` on ``channel``, ``callback`` called in the channel's reader.

    The broker sends no delivery before its ConsumeOk, but the reader may read one before this
    coroutine resumes: that one reaches ``callback`` through aiormq's wrapper, a turn later.
    A channel that keeps no ``consumers`` map (not aiormq's) calls it that way throughout.
    """
    ok = await channel.basic_consume(queue, callback, no_ack=no_ack)
    consumers = getattr(channel, "consumers", None)
    if isinstance(consumers, dict) and ok.consumer_tag in consumers:
        consumers[ok.consumer_tag] = callback
    return ok
