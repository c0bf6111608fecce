"""Calls longer than the broker's consumer timeout.

RabbitMQ closes the channel of a delivery held unacked longer than its ``consumer_timeout``
(30 minutes by default), cancelling every call on it; 3.10 can change that only broker-wide.
So a server does not hold a long call's delivery: once the call has run for half the timeout,
the server puts a *lease* — a copy of the request, expiring after another half — in the
namespace's lease queue, then acks the delivery, and renews the lease while the call runs. The
lease queue has no consumers: an expired lease goes back to the request queue. A server that
gets one back asks the lease holder whether the call is still running or done; the answer drops
it, silence (the holder died) runs it again — at least once, as for any delivery.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from pamqp.commands import Basic

from atasks.events import SERVER_ID
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import Link, describe
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")

QUERY_TIMEOUT = 5.0  # seconds a lease holder has to say it still has the call
LEASE = "lease"
Ask = Callable[[str, str, Mapping[str, Any], float], Awaitable[Reply | None]]


class Held(Protocol):
    """A delivery as a lease sees it."""

    body: bytes
    properties: Basic.Properties
    settled: bool

    async def ack(self) -> None: ...


class Leases:
    """Leases for the long calls of one server."""

    def __init__(self, link: Link, topology: Topology, consumer_timeout: float, ask: Ask):
        self.link = link
        self.topology = topology
        self.term = consumer_timeout / 2  # lease after this long, for this long
        self.ask = ask
        self.server = SERVER_ID
        self._calls: dict[str, float] = {}  # call id → when it ended (0: still running)
        self._renewing: set[asyncio.Task[None]] = set()

    def holding(self, name: str, message: Held) -> Holding:
        """``with leases.holding(name, message):`` — while the body runs, lease the call once
        its delivery has been held half the consumer timeout."""
        return Holding(self, name, message)

    def _start(self, name: str, call_id: str, message: Held) -> None:
        if message.settled:
            return
        self._calls[call_id] = 0.0
        task = asyncio.get_running_loop().create_task(self._renew(name, call_id, message))
        self._renewing.add(task)
        task.add_done_callback(self._renewing.discard)

    async def _renew(self, name: str, call_id: str, message: Held) -> None:
        """Lease, ack, and renew half-way through each lease, until the call is over."""
        while self._calls.get(call_id) == 0.0:
            try:
                channels = await self.link.ready()
                await channels.calls_raw.basic_publish(  # confirmed, then the ack
                    message.body,
                    exchange=self.topology.lease_exchange,
                    routing_key=self.topology.request_queue(name),
                    properties=self._lease_properties(message.properties),
                )
                if not message.settled:
                    await message.ack()
                    log.info(
                        "call %s of %r runs past half the consumer timeout: leased", call_id, name
                    )
            except Exception as exc:  # keep the call safe: try again in a moment
                log.warning("could not renew the lease of call %s: %s", call_id, describe(exc))
                await asyncio.sleep(1)
                continue
            await asyncio.sleep(self.term / 2)

    def _lease_properties(self, original: Basic.Properties) -> Basic.Properties:
        headers = {
            key: value
            for key, value in (original.headers or {}).items()
            if not key.startswith("x-")
        }
        headers[wire.H_LEASE_HOLDER] = self.server
        deaths = wire.deaths_now(original.headers or {}, died=False)
        if deaths:  # the broker's count is not copied: atasks' own goes on
            headers[wire.H_DELIVERIES] = deaths
        return Basic.Properties(
            headers=headers,
            content_type=original.content_type,
            delivery_mode=wire.PERSISTENT,
            correlation_id=original.correlation_id,
            reply_to=original.reply_to,
            expiration=str(int(self.term * 1000)),
            priority=original.priority,
            message_type=original.message_type,
        )

    async def still_held(self, properties: Basic.Properties) -> bool:
        """Whether an expired lease's call is still running, or done, on its holder."""
        holder = str((properties.headers or {}).get(wire.H_LEASE_HOLDER, ""))
        call_id = properties.correlation_id or ""
        if not holder:
            return False
        if holder == self.server:
            return call_id in self._calls
        answer = await self.ask(
            self.topology.control_exchange,
            LEASE,
            {wire.H_LEASE_HOLDER: holder, wire.H_LEASE_CALL: call_id},
            QUERY_TIMEOUT,
        )
        if answer is None:
            log.warning(
                "the holder %s of call %s does not answer: running the call again", holder, call_id
            )
        return answer is not None

    def learn_timeout(self, held: float) -> None:
        """The broker's consumer timeout closed a channel on a delivery held ``held`` seconds:
        its timeout is shorter than this server was told. Lease sooner from now on."""
        term = held / 3
        if 0 < term < self.term:
            log.warning(
                "the broker's consumer timeout is about %.0fs, shorter than this server was told "
                "(%.0fs): leasing calls after %.0fs from now on; set --consumer-timeout",
                held,
                self.term * 2,
                term,
            )
            self.term = term

    def answers(self, headers: Mapping[str, Any]) -> bool:
        """Whether this server holds the lease a query asks about."""
        return (
            headers.get(wire.H_LEASE_HOLDER) == self.server
            and str(headers.get(wire.H_LEASE_CALL, "")) in self._calls
        )

    def ended(self, call_id: str) -> None:
        if call_id in self._calls:
            self._calls[call_id] = time.monotonic()  # done: say so until its leases run out
            self._forget_old()

    def _forget_old(self) -> None:
        expired = time.monotonic() - 3 * self.term  # past the last lease's return
        for call_id, ended in list(self._calls.items()):
            if 0.0 < ended < expired:
                del self._calls[call_id]

    def stop(self) -> None:
        for task in list(self._renewing):
            task.cancel()


class Holding:
    """The lease timer of one delivery being held (a plain class: this is on every call)."""

    __slots__ = ("call_id", "leases", "message", "name", "timer")

    def __init__(self, leases: Leases, name: str, message: Held) -> None:
        self.leases, self.name, self.message = leases, name, message
        self.call_id = message.properties.correlation_id or ""
        self.timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> None:
        self.timer = asyncio.get_running_loop().call_later(self.leases.term, self._due)

    def _due(self) -> None:
        self.leases._start(self.name, self.call_id, self.message)

    def __exit__(self, *exc_info: object) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.leases.ended(self.call_id)
