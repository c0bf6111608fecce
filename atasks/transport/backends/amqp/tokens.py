"""Fleet-wide tokens over RabbitMQ: the messages of a quorum queue, held unacked (the queues of
a pool, and how it is made exactly once: ``pools``).

A taker consumes the pool's token queue with a consumer of its own (prefetch 1), cancelled once
it got a token: the token stays unacked, *held*, while the call runs, and is rejected back to
the queue after. When the holder's connection dies, the broker returns it by itself. A rate's
token is *spent* instead: in one transaction it is acked and a copy put in the pool's cooldown
queue, whose TTL dead-letters it back to the token queue one period later.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import aio_pika
import aiormq
from aio_pika.abc import AbstractChannel

from atasks.errors import TransportError
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.pools import (
    cooldown_queue,
    index_of,
    persistent,
    resize_fenced,
    tokens_queue,
)
from atasks.transport.tokens import Token, Tokens

PLAIN_CHANNELS = 8  # channels that limits' and locks' takers consume on, in turn
TX = -1  # the transactional channel rates' takers consume on


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
        # Plain ones take turns: a quorum queue's basic.consume is a Raft command, milliseconds
        # long, and a channel makes one such call at a time.
        self._channels: dict[int, tuple[AbstractChannel, aiormq.abc.AbstractChannel]] = {}
        self._lost: dict[int, asyncio.Event] = {}
        self._turn = 0
        self._opening: asyncio.Lock | None = None
        self._committing: asyncio.Lock | None = None  # one transaction at a time
        self._making: dict[str, asyncio.Lock] = {}
        self._cancelling: set[asyncio.Future[None]] = set()

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
                            properties=persistent(),
                        )
                    await raw.basic_ack(held.tag)
                    await raw.tx_commit()
                return
            except CONNECTION_ERRORS:
                continue  # the broker returned the token with its channel: wait again

    async def _wait(self, name: str, size: int, tx: bool) -> _Held | None:
        """Wait for a token on the current channel; ``None`` if the channel closed first."""
        if tx:
            which = TX
        else:
            which = self._turn = (self._turn + 1) % PLAIN_CHANNELS
        raw, lost = await self._consuming(which)
        got: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        async def on_token(message: aiormq.abc.DeliveredMessage) -> None:
            tag: int = message.delivery.delivery_tag or 0  # type: ignore[union-attr]
            index = index_of(message.body)
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
                # In the background: the taker need not wait for cancel-ok, and until then a
                # token delivered late still reaches on_token, which gives it back.
                cancelling = asyncio.ensure_future(_cancel(raw, consumer))
                self._cancelling.add(cancelling)
                cancelling.add_done_callback(self._cancelling.discard)
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

    async def _consuming(self, which: int) -> tuple[aiormq.abc.AbstractChannel, asyncio.Event]:
        """Channel ``which`` that takers consume on (prefetch 1 per consumer; ``TX``:
        transactional), and an event set when it closes."""
        if self._opening is None:
            self._opening, self._committing = asyncio.Lock(), asyncio.Lock()
        async with self._opening:
            found, lost = self._channels.get(which), self._lost.get(which)
            if found is not None and lost is not None and not (found[1].is_closed or lost.is_set()):
                return found[1], lost
            channels = await self.link.ready()
            try:
                channel = await channels.connection.channel(publisher_confirms=False)
                lost = self._lost[which] = asyncio.Event()
                channel.close_callbacks.add(lambda *_: lost.set())
                await channel.set_qos(prefetch_count=1)
                raw = await channel.get_underlay_channel()
                if which == TX:
                    await raw.tx_select()
                self._channels[which] = channel, raw
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
                channels = await self.link.ready()
                await resize_fenced(channels.connection, self.namespace, name, size, period)
                self._made[name] = size

    async def close(self) -> None:
        found, self._channels = list(self._channels.values()), {}
        self._made.clear()
        for channel, _ in found:
            if not channel.is_closed:
                with contextlib.suppress(*CONNECTION_ERRORS, aio_pika.exceptions.ChannelClosed):
                    await channel.close()


async def _cancel(raw: aiormq.abc.AbstractChannel, consumer: str) -> None:
    with contextlib.suppress(*CONNECTION_ERRORS):
        await raw.basic_cancel(consumer)
