"""Direct replies that survive a lost connection: the caller side.

Replies come by RabbitMQ's direct reply-to, whose address dies with the caller's channel. After
a reconnect, the caller asks every server (the control exchange) to resume the calls it still
awaits: a server sends again the reply it keeps for a while after sending it, or sends the reply
of a call still running or queued to the new address (``server/resuming.py``). A server may
come back after the caller, so the question is asked again, less and less often, for as long as
calls from before the reconnect are awaited.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection, Iterable, Iterator, MutableMapping, Sequence
from typing import Any

from pamqp.commands import Basic

from atasks.errors import StreamInterrupted
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.topology import DIRECT_REPLY_TO, Topology

log = logging.getLogger("atasks.amqp")

RESUME = "resume"  # the message type of the question
AGAIN = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)  # seconds between questions; then the last, repeated
IDS_PER_MESSAGE = 10_000  # call ids in one question, at most


def schedule(again: Sequence[float] = AGAIN) -> Iterator[float]:
    """The waits between one question and the next: ``again``, then its last for ever."""
    yield from again
    while True:
        yield again[-1]


def pack_ids(call_ids: Collection[str]) -> list[bytes]:
    """The bodies of the questions that ask for ``call_ids``: one id a line."""
    ordered = sorted(call_ids)
    return [
        "\n".join(ordered[i : i + IDS_PER_MESSAGE]).encode()
        for i in range(0, len(ordered), IDS_PER_MESSAGE)
    ]


def unpack_ids(body: bytes) -> list[str]:
    """The call ids a question asks for; ``ValueError`` when it is not text."""
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise ValueError(f"the call ids of a resume are not UTF-8: {exc}") from None
    return [line for line in text.split("\n") if line]


def is_direct(reply_to: str | None) -> bool:
    """Whether ``reply_to`` is a direct reply-to address (which a reconnect may replace)."""
    return reply_to is not None and reply_to.startswith(DIRECT_REPLY_TO)


def interrupt_streams(
    pending: MutableMapping[str, asyncio.Future[Any]],
    streams: Iterable[str],
    cancel: Callable[[str], None],
) -> None:
    """Fail the streams among the calls awaited (and ``cancel`` each on its server): their items
    went to the address the lost connection had, and a stream does not replay them."""
    for call_id in streams:
        future = pending.pop(call_id, None)
        if future is not None and not future.done():
            future.set_exception(
                StreamInterrupted(
                    "lost the connection to the broker: with direct replies a stream does not "
                    'survive it (replies="durable" keeps its items)'
                )
            )
            cancel(call_id)


class Resumer:
    """Asks the servers to resume the calls awaited across a reconnect (``pending`` lists the
    call ids awaited now)."""

    def __init__(
        self,
        link: Link,
        topology: Topology,
        pending: Callable[[], Collection[str]],
        again: Sequence[float] = AGAIN,
    ) -> None:
        self.link = link
        self.topology = topology
        self.pending = pending
        self.again = again
        self._owed: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    def reconnected(self) -> None:
        """A new connection: resume every call awaited now (published before it, or again)."""
        self._owed.update(self.pending())
        if self._owed and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._ask())

    async def _ask(self) -> None:
        for wait in schedule(self.again):
            pending = self.pending()
            self._owed.intersection_update(pending)
            if not self._owed:
                return
            try:
                channels = await self.link.ready()
                for body in pack_ids(self._owed):
                    await channels.calls_raw.basic_publish(
                        body,
                        exchange=self.topology.control_exchange,
                        properties=Basic.Properties(message_type=RESUME, reply_to=DIRECT_REPLY_TO),
                    )
                log.debug("asked the servers to resume %d call(s)", len(self._owed))
            except Exception as exc:  # the next connection asks again; aiormq may raise anything
                level = logging.DEBUG if isinstance(exc, CONNECTION_ERRORS) else logging.WARNING
                log.log(level, "could not ask to resume calls: %s", describe(exc))
            await asyncio.sleep(wait)

    def close(self) -> None:
        """Stop asking."""
        if self._task is not None:
            self._task.cancel()
        self._owed.clear()
