"""Frames handed to the socket as they are sent, not a turn of the loop later.

aiormq puts every frame it sends (a publish, an ack, a heartbeat) on its connection's write
queue, and one task per connection takes them off and writes them, so each write waits for
that task's next turn. ``write_at_once`` has the queue write a frame itself when nothing is
ahead of it (the queue is empty and the writer task waits on it): it leaves in the order it
would have, a turn sooner. A frame to be drained, the connection's last (``Close-Ok``), and
any frame while the writer task is busy or the connection is closing go through the queue.

This reaches past aiormq's API (the writer task's stream, in aiormq 6.8 to 7.2) and asyncio's
(the getters of a queue); where either is not found, the queue is left as it is.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiormq

log = logging.getLogger("atasks.amqp")


class _AtOnce(asyncio.Queue[Any]):
    """aiormq's write queue, writing a frame with nothing ahead of it itself."""

    _stream: asyncio.StreamWriter
    _connection: aiormq.abc.AbstractConnection

    def put_nowait(self, item: Any) -> None:
        if self._ahead_of_nothing(item):
            self._stream.write(item.payload)
        else:
            super().put_nowait(item)

    def _ahead_of_nothing(self, item: Any) -> bool:
        if not self.empty() or item.drain_future is not None or item.should_close:
            return False
        getters = self._getters  # type: ignore[attr-defined]  # asyncio's, checked when installed
        if not getters or getters[0].done():  # the writer task is not waiting for a frame
            return False
        return not self._connection.is_closed and not self._stream.is_closing()


def write_at_once(connection: aiormq.abc.AbstractConnection) -> bool:
    """Make ``connection`` (aiormq's, open) write a frame with nothing ahead of it at once;
    returns whether it could."""
    queue = getattr(connection, "write_queue", None)
    stream = _writer_stream(connection)
    if type(queue) is not asyncio.Queue or not hasattr(queue, "_getters") or stream is None:
        log.debug("frames go through aiormq's writer task: its queue or stream is not known")
        return False
    queue.__class__ = _AtOnce
    at_once: Any = queue
    at_once._stream = stream
    at_once._connection = connection
    return True


def _writer_stream(connection: aiormq.abc.AbstractConnection) -> asyncio.StreamWriter | None:
    """The stream aiormq's writer task writes to (its coroutine's ``writer`` argument)."""
    task = getattr(connection, "_writer_task", None)
    task = getattr(task, "task", task)  # aiormq keeps it in a TaskWrapper
    if not isinstance(task, asyncio.Task) or task.done():
        return None
    frame = getattr(task.get_coro(), "cr_frame", None)
    stream = frame.f_locals.get("writer") if frame is not None else None
    return stream if isinstance(stream, asyncio.StreamWriter) else None
