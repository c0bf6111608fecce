"""An unconfirmed publish and the acks behind it, handed to the socket in one write.

aiormq writes each publish and each ack with a system call of its own, and on loopback TCP a
write costs more than anything else a server does for a call (py-spy: about a fifth of its CPU
one call at a time). A direct reply and the ack of its request go on the same unconfirmed
channel, the ack behind the reply, so the two can leave as one frame sequence in one write: the
broker reads them in that order either way.

This reaches past aiormq's public API (its channel's write queue and lock, and
``ChannelFrame``, all in aiormq 6.8 to 7.2); where a channel lacks them, or confirms its
publishes, the publish and the acks go through the public methods, in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp.body import ContentBody
from pamqp.commands import Basic
from pamqp.header import ContentHeader


def _writable(channel: aiormq.abc.AbstractChannel) -> bool:
    return (
        not getattr(channel, "publisher_confirms", True)
        and hasattr(channel, "write_queue")
        and hasattr(channel, "lock")
        and hasattr(channel, "max_content_size")
    )


async def publish_and_ack(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    *,
    routing_key: str,
    properties: Basic.Properties,
    tags: Sequence[int] = (),
) -> None:
    """Publish ``body`` to ``routing_key`` on ``channel`` (unconfirmed, not waiting for the
    write), then ack the deliveries ``tags`` of that channel behind it: in one write where
    aiormq allows it. Raises aiormq's ``ChannelInvalidStateError`` on a closed channel."""
    if not _writable(channel):
        await _one_by_one(channel, body, routing_key, properties, tags)
        return
    raw: Any = channel
    if raw.is_closed:
        raise aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
    size = raw.max_content_size
    frames: list[Any] = [
        Basic.Publish(exchange="", routing_key=routing_key),
        ContentHeader(properties=properties, body_size=len(body)),
    ]
    frames += [ContentBody(body[i : i + size]) for i in range(0, len(body), size)]
    frames += [Basic.Ack(delivery_tag=tag) for tag in tags]
    frame = ChannelFrame.marshall(channel_number=raw.number, frames=frames)
    async with raw.lock:  # as aiormq's own publish: in order with the channel's other ones
        await raw.write_queue.put(frame)


async def _one_by_one(
    channel: aiormq.abc.AbstractChannel,
    body: bytes,
    routing_key: str,
    properties: Basic.Properties,
    tags: Sequence[int],
) -> None:
    publish: Any = channel.basic_publish  # the abstract one lacks wait
    await publish(body, routing_key=routing_key, properties=properties, wait=False)
    for tag in tags:
        await channel.basic_ack(tag, wait=False)
