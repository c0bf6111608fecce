"""Fleet-wide tokens over RabbitMQ: the messages of a quorum queue, held unacked.

Per pool ``key`` of namespace ``ns``:

- ``atasks-tokens.<ns>.<key>``: a durable quorum queue holding the free tokens, each a message
  whose body is its index (0 to size - 1). A taker consumes it with a consumer of its own
  (prefetch 1), cancelled once it got a token: the token stays unacked, *held*, while the call
  runs, and is rejected back to the queue after. When the holder's connection dies, the broker
  returns the token by itself. The queue's consumers are the takers still waiting.
- ``atasks-tokens-size.<ns>.<key>``: a durable quorum queue holding one message, the pool's
  size. Tokens are made or added in one AMQP transaction with the new size (and the old size's
  ack), so a maker that dies half-way made none of them.
- ``atasks-tokens-fence.<ns>.<key>``: an exclusive queue that only one connection can declare at
  a time: whoever has it reads and changes the size. It goes when its connection does.

A pool that shrinks is not emptied at once: tokens whose index is past the new size are acked
(destroyed) instead of given back, by whoever takes or releases them knowing the new size.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel
from pamqp import commands as spec

from atasks.errors import TransportError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.tokens import Token, TokenCount, Tokens

log = logging.getLogger("atasks.amqp")

FENCE_WAIT = 30.0  # seconds a maker waits for another one to finish
NO_DELIVERY_LIMIT = 2**30  # quorum queues count returns; a token is returned after every call
TOKEN_ARGUMENTS: dict[str, Any] = {
    "x-queue-type": "quorum",
    "x-delivery-limit": NO_DELIVERY_LIMIT,
}
SIZE_ARGUMENTS: dict[str, Any] = {"x-queue-type": "quorum"}


def tokens_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens.{namespace}.{key}"


def size_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-size.{namespace}.{key}"


def fence_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-fence.{namespace}.{key}"


def cooldown_queue(namespace: str, key: str) -> str:
    return f"atasks-tokens-cooldown.{namespace}.{key}"


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


class _Held(Token):
    __slots__ = ("_raw", "channel", "index", "size", "tag")

    def __init__(self, raw: aiormq.abc.AbstractChannel, tag: int, index: int, size: int) -> None:
        self._raw: aiormq.abc.AbstractChannel | None = raw
        self.channel = raw
        self.tag, self.index, self.size = tag, index, size

    async def release(self) -> None:
        raw, self._raw = self._raw, None
        if raw is None or raw.is_closed:
            return  # its channel is gone: the broker has returned it already
        with contextlib.suppress(*CONNECTION_ERRORS):
            if self.index < self.size:
                await raw.basic_reject(self.tag, requeue=True)
            else:  # the pool shrank: this one goes
                await raw.basic_ack(self.tag)


class AMQPTokens(Tokens):
    """The token pools of one namespace over one connection (``Link``)."""

    def __init__(self, link: Link, namespace: str) -> None:
        self.link = link
        self.namespace = namespace
        self._made: dict[str, int] = {}  # pools whose size this process checked or set
        # The channels takers consume on: plain (limits, locks) and transactional (rates).
        self._channels: dict[bool, tuple[AbstractChannel, aiormq.abc.AbstractChannel]] = {}
        self._lost: dict[bool, asyncio.Event] = {}
        self._opening: asyncio.Lock | None = None
        self._committing: asyncio.Lock | None = None  # one transaction at a time
        self._making: dict[str, asyncio.Lock] = {}

    async def take(self, name: str, size: int) -> Token:
        if size < 1:
            raise ValueError(f"a token pool has at least one token, not {size}")
        if self._made.get(name) != size:
            await self.make(name, size)
        while True:
            held = await self._wait(name, size, False)
            if held is not None:
                return held

    async def spend(self, name: str, size: int, period: float) -> None:
        if size < 1 or period <= 0:
            raise ValueError(f"a rate is at least one call per period > 0, not {size}/{period}")
        if self._made.get(name) != size:
            await self.make(name, size, period)
        while True:
            held = await self._wait(name, size, True)
            if held is None:
                continue
            raw = held.channel
            assert self._committing is not None
            try:
                async with self._committing:
                    if held.index < size:
                        await raw.basic_publish(
                            str(held.index).encode(),
                            routing_key=cooldown_queue(self.namespace, name),
                            properties=_persistent(),
                        )
                    await raw.basic_ack(held.tag)
                    await raw.tx_commit()
                return
            except CONNECTION_ERRORS:
                continue  # the broker returned the token with its channel: wait again

    async def _wait(self, name: str, size: int, tx: bool) -> _Held | None:
        """Wait for a token on the current channel; ``None`` if the channel closed first."""
        raw, lost = await self._consuming(tx)
        got: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        async def on_token(message: aiormq.abc.DeliveredMessage) -> None:
            tag: int = message.delivery.delivery_tag or 0  # type: ignore[union-attr]
            index = _index(message.body)
            with contextlib.suppress(*CONNECTION_ERRORS):
                if index >= self._made.get(name, size):
                    await raw.basic_ack(tag)  # past the size: the pool shrank
                elif got.done():  # came as the wait ended
                    await self._reject(raw, tag, tx)
                else:
                    got.set_result((tag, index))

        consumer = f"atasks-token-{uuid.uuid4().hex}"
        try:
            await raw.basic_consume(
                tokens_queue(self.namespace, name), on_token, consumer_tag=consumer
            )
            waiting_lost: asyncio.Future[Any] = asyncio.ensure_future(lost.wait())
            try:
                await asyncio.wait({got, waiting_lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                waiting_lost.cancel()
        except CONNECTION_ERRORS:
            pass  # the channel is gone: wait on the next one
        finally:
            if not raw.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS):
                    await asyncio.shield(raw.basic_cancel(consumer))
            held: _Held | None = None
            if got.done() and not got.cancelled():
                tag, index = got.result()
                held = _Held(raw, tag, index, size)
                if lost.is_set():
                    held = None  # returned by the broker with its channel
                elif asyncio.current_task().cancelling():  # type: ignore[union-attr]
                    await self._reject(raw, tag, tx)  # came as this wait was cancelled
                    held = None
            else:
                got.cancel()
        return held

    async def _reject(self, raw: aiormq.abc.AbstractChannel, tag: int, tx: bool) -> None:
        """Give back a token nobody took (in a transaction, committed at once)."""
        with contextlib.suppress(*CONNECTION_ERRORS):
            if not tx:
                await raw.basic_reject(tag, requeue=True)
                return
            assert self._committing is not None
            async with self._committing:
                await raw.basic_reject(tag, requeue=True)
                await raw.tx_commit()

    async def _consuming(self, tx: bool) -> tuple[aiormq.abc.AbstractChannel, asyncio.Event]:
        """The channel takers consume on (prefetch 1 per consumer; ``tx``: transactional), and
        an event set when it closes."""
        if self._opening is None:
            self._opening, self._committing = asyncio.Lock(), asyncio.Lock()
        async with self._opening:
            found, lost = self._channels.get(tx), self._lost.get(tx)
            if found is not None and lost is not None and not (found[1].is_closed or lost.is_set()):
                return found[1], lost
            channels = await self.link.ready()
            try:
                channel = await channels.connection.channel(publisher_confirms=False)
                lost = self._lost[tx] = asyncio.Event()
                channel.close_callbacks.add(lambda *_: lost.set())
                await channel.set_qos(prefetch_count=1)
                raw = await channel.get_underlay_channel()
                if tx:
                    await raw.tx_select()
                self._channels[tx] = channel, raw
            except CONNECTION_ERRORS as exc:
                raise TransportError(f"could not wait for a token: {describe(exc)}") from exc
            return raw, lost

    async def make(self, name: str, size: int, period: float | None = None) -> None:
        """Make pool ``name`` hold ``size`` tokens in all, exactly once across the fleet
        (``period``: with a cooldown queue that gives each spent one back after so long)."""
        # The fence is per connection: calls of this process take turns before it.
        making = self._making.setdefault(name, asyncio.Lock())
        async with making:
            if self._made.get(name) != size:
                await self._make(name, size, period)

    async def _make(self, name: str, size: int, period: float | None) -> None:
        channels = await self.link.ready()
        connection = channels.connection
        fence = fence_queue(self.namespace, name)
        try:
            async with asyncio.timeout(FENCE_WAIT):
                fencing = await _fence(connection, fence)
        except TimeoutError:
            raise TransportError(
                f"could not set up the token pool {name!r}: another process held its fence "
                f"{fence!r} for {FENCE_WAIT:g}s"
            ) from None
        try:
            await self._resize(connection, name, size, period)
        except CONNECTION_ERRORS as exc:
            raise TransportError(
                f"could not set up the token pool {name!r}: {describe(exc)}"
            ) from exc
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
                await fencing.queue_delete(fence)
                await fencing.close()
        self._made[name] = size

    async def _resize(
        self,
        connection: aio_pika.abc.AbstractConnection,
        name: str,
        size: int,
        period: float | None,
    ) -> None:
        channel = await connection.channel(publisher_confirms=False)
        try:
            tokens, sizes = tokens_queue(self.namespace, name), size_queue(self.namespace, name)
            await channel.declare_queue(tokens, durable=True, arguments=TOKEN_ARGUMENTS)
            await channel.declare_queue(sizes, durable=True, arguments=SIZE_ARGUMENTS)
            if period is not None:
                await channel.declare_queue(
                    cooldown_queue(self.namespace, name),
                    durable=True,
                    arguments=cooldown_arguments(tokens, period),
                )
            raw = await channel.get_underlay_channel()
            await raw.tx_select()
            found = await raw.basic_get(sizes, no_ack=False)
            had = _index(found.body) if isinstance(found.delivery, spec.Basic.GetOk) else 0
            if had == size:
                return
            for index in range(had, size):
                await raw.basic_publish(
                    str(index).encode(), routing_key=tokens, properties=_persistent()
                )
            await raw.basic_publish(str(size).encode(), routing_key=sizes, properties=_persistent())
            if isinstance(found.delivery, spec.Basic.GetOk) and found.delivery.delivery_tag:
                await raw.basic_ack(found.delivery.delivery_tag)
            await raw.tx_commit()
            log.info("token pool %r: %d tokens (was %d)", name, size, had)
        finally:
            with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
                await channel.close()  # an unacked size goes back untouched

    async def count(self, name: str) -> TokenCount | None:
        """Free tokens and waiting takers of pool ``name`` (``None``: no such pool)."""
        channels = await self.link.ready()
        channel = await channels.connection.channel(publisher_confirms=False)
        try:
            queue = await channel.declare_queue(tokens_queue(self.namespace, name), passive=True)
        except aio_pika.exceptions.ChannelNotFoundEntity:
            return None
        found = queue.declaration_result
        with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
            await channel.close()
        return TokenCount(name, found.message_count or 0, found.consumer_count or 0)

    async def close(self) -> None:
        found, self._channels = list(self._channels.values()), {}
        self._made.clear()
        for channel, _ in found:
            if not channel.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
                    await channel.close()


async def _fence(connection: aio_pika.abc.AbstractConnection, fence: str) -> AbstractChannel:
    """A channel of ``connection`` that declared the exclusive queue ``fence``; waits while
    another connection has it."""
    while True:
        channel = await connection.channel(publisher_confirms=False)
        try:
            await channel.declare_queue(fence, exclusive=True, auto_delete=True)
            return channel
        except aiormq.exceptions.ChannelLockedResource:
            await asyncio.sleep(random.uniform(0.02, 0.1))  # the holder is making the pool


def _index(body: bytes) -> int:
    try:
        return int(body)
    except ValueError:
        return 1 << 62  # not a token: past any size, so it is dropped


def _persistent() -> spec.Basic.Properties:
    return spec.Basic.Properties(delivery_mode=wire.PERSISTENT)
