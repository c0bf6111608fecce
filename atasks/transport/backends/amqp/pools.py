"""The queues of a fleet-wide token pool over RabbitMQ, how a pool is made exactly once, and
what ``atasks limits`` reads of them.

Per pool ``key`` of namespace ``ns`` (``atask.<name>``, ``rate.<name>.<period>``, ``lock.<name>``):

- ``atasks-tokens.<ns>.<key>``: a durable quorum queue holding the free tokens, each a message
  whose body is its index (0 to size - 1). Its consumers are the takers still waiting (see
  ``tokens``); a token held by a running call is an unacked message, returned by the broker when
  its holder's connection dies.
- ``atasks-tokens-cooldown.<ns>.<key>`` (rates only): a durable quorum queue where a spent token
  waits one period (its TTL), then is dead-lettered back to the token queue.
- ``atasks-tokens-size.<ns>.<key>``: a durable quorum queue holding one message, the pool's
  size. Tokens are made or added in one AMQP transaction with the new size (and the old size's
  ack), so a maker that dies half-way made none of them.
- ``atasks-tokens-fence.<ns>.<key>``: an exclusive queue that only one connection can declare at
  a time: whoever has it reads and changes the size. It goes when its connection does.
- ``atasks-tokens-pools.<ns>``: one message per pool of the namespace, its key, published in the
  transaction that first makes the pool: what ``atasks limits`` lists.

A pool that shrinks is not emptied at once: tokens whose index is past the new size are acked
(destroyed) instead of given back, by whoever takes or releases them knowing the new size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel, AbstractConnection
from pamqp import commands as spec

from atasks.errors import TransportError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe

log = logging.getLogger("atasks.amqp")

FENCE_WAIT = 30.0  # seconds a maker waits for another one to finish
NO_DELIVERY_LIMIT = 2**30  # quorum queues count returns; a token is returned after every call
TOKEN_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum", "x-delivery-limit": NO_DELIVERY_LIMIT}
QUORUM: dict[str, Any] = {"x-queue-type": "quorum"}
_CLOSING = (*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed)


def tokens_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens.{namespace}.{key}"


def size_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-size.{namespace}.{key}"


def fence_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-fence.{namespace}.{key}"


def cooldown_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-cooldown.{namespace}.{key}"


def pools_queue(namespace: str) -> str:
    return f"atasks-tokens-pools.{namespace}"


def cooldown_arguments(tokens: str, period: float) -> dict[str, Any]:
    """A spent token waits ``period`` seconds here, then goes back to ``tokens``."""
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": max(1, round(period * 1000)),
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": tokens,
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",  # at-least-once dead-lettering needs it
    }


def index_of(body: bytes) -> int:
    """A token's index (or a size) from a message body."""
    try:
        return int(body)
    except ValueError:
        return 1 << 62  # not a token: past any size, so it is dropped


def persistent() -> spec.Basic.Properties:
    return spec.Basic.Properties(delivery_mode=wire.PERSISTENT)


@contextlib.asynccontextmanager
async def fenced(connection: AbstractConnection, namespace: str, key: str) -> AsyncIterator[None]:
    """Hold pool ``key``'s fence (one connection at a time; not one task: see ``AMQPTokens``)."""
    fence = fence_queue(namespace, key)
    try:
        async with asyncio.timeout(FENCE_WAIT):
            while True:
                channel = await connection.channel(publisher_confirms=False)
                try:
                    await channel.declare_queue(fence, exclusive=True, auto_delete=True)
                    break
                except aiormq.exceptions.ChannelLockedResource:
                    await asyncio.sleep(random.uniform(0.02, 0.1))  # another one holds it
    except TimeoutError:
        raise TransportError(
            f"token pool {key!r}: another process held its fence {fence!r} for {FENCE_WAIT:g}s"
        ) from None
    try:
        yield
    finally:
        with contextlib.suppress(*_CLOSING):
            await channel.queue_delete(fence)
            await channel.close()


async def resize_fenced(
    connection: AbstractConnection, namespace: str, key: str, size: int, period: float | None
) -> None:
    """Make pool ``key`` hold ``size`` tokens in all, under its fence."""
    try:
        async with fenced(connection, namespace, key):
            await _resize(connection, namespace, key, size, period)
    except CONNECTION_ERRORS as exc:
        raise TransportError(f"could not set up token pool {key!r}: {describe(exc)}") from exc


async def _resize(
    connection: AbstractConnection, namespace: str, key: str, size: int, period: float | None
) -> None:
    channel = await connection.channel(publisher_confirms=False)
    try:
        tokens, sizes = tokens_queue(namespace, key), size_queue(namespace, key)
        await channel.declare_queue(tokens, durable=True, arguments=TOKEN_ARGUMENTS)
        await channel.declare_queue(sizes, durable=True, arguments=QUORUM)
        await channel.declare_queue(pools_queue(namespace), durable=True, arguments=QUORUM)
        if period is not None:
            await channel.declare_queue(
                cooldown_queue(namespace, key),
                durable=True,
                arguments=cooldown_arguments(tokens, period),
            )
        raw = await channel.get_underlay_channel()
        await raw.tx_select()
        found = await raw.basic_get(sizes, no_ack=False)
        got = found.delivery if isinstance(found.delivery, spec.Basic.GetOk) else None
        had = index_of(found.body) if got is not None else 0
        if had == size:
            return
        for index in range(had, size):
            await raw.basic_publish(
                str(index).encode(), routing_key=tokens, properties=persistent()
            )
        await raw.basic_publish(str(size).encode(), routing_key=sizes, properties=persistent())
        if got is None:
            await raw.basic_publish(
                key.encode(), routing_key=pools_queue(namespace), properties=persistent()
            )
        elif got.delivery_tag:
            await raw.basic_ack(got.delivery_tag)
        await raw.tx_commit()
        log.info("token pool %r: %d tokens (was %d)", key, size, had)
    finally:
        with contextlib.suppress(*_CLOSING):
            await channel.close()  # an unacked size goes back untouched


@dataclass(frozen=True, slots=True)
class PoolState:
    """What the broker shows of one pool: its size, tokens free, held by running calls (or, for
    a rate, being spent), cooling down (spent in the last period), and takers waiting."""

    key: str
    size: int
    free: int
    held: int
    cooling: int
    waiting: int

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


async def pool_states(connection: AbstractConnection, namespace: str) -> list[PoolState]:
    """Every pool of ``namespace``, as ``atasks limits`` shows them."""
    keys = await _browse(connection, pools_queue(namespace))
    states = []
    for key in sorted({body.decode(errors="replace") for body in keys}):
        async with fenced(connection, namespace, key):  # reading the size hides it a moment
            sizes = await _browse(connection, size_queue(namespace, key))
        size = index_of(sizes[0]) if sizes else 0
        free, consumers = await _depth(connection, tokens_queue(namespace, key))
        cooling = (await _depth(connection, cooldown_queue(namespace, key)))[0]
        held = max(size - free - cooling, 0)
        # A quorum queue counts a cancelled consumer until its unacked messages are settled
        # (3.10 and 4.x alike): each holder's, besides the waiting takers'.
        waiting = max(consumers - held, 0)
        states.append(PoolState(key, size, free, held, cooling, waiting))
    return states


async def _browse(connection: AbstractConnection, queue: str) -> list[bytes]:
    """The bodies of the messages in ``queue``, left there (got unacked, returned on close)."""
    channel = await connection.channel(publisher_confirms=False)
    bodies: list[bytes] = []
    try:
        raw = await channel.get_underlay_channel()
        while True:
            found = await raw.basic_get(queue, no_ack=False)
            if not isinstance(found.delivery, spec.Basic.GetOk):
                return bodies
            bodies.append(found.body)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return bodies
    finally:
        with contextlib.suppress(*_CLOSING):
            await channel.close()


async def _depth(connection: AbstractConnection, queue: str) -> tuple[int, int]:
    """Messages ready in ``queue`` and its consumers (0, 0 for no such queue)."""
    channel: AbstractChannel = await connection.channel(publisher_confirms=False)
    try:
        found = (await channel.declare_queue(queue, passive=True)).declaration_result
        return found.message_count or 0, found.consumer_count or 0
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return 0, 0
    finally:
        with contextlib.suppress(*_CLOSING):
            await channel.close()


async def read_pools(url: str, namespace: str) -> list[PoolState]:
    """``pool_states`` over a connection of its own to ``url``."""
    connection = await aio_pika.connect(url)
    async with connection:
        return await pool_states(connection, namespace)
