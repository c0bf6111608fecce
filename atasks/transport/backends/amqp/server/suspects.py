"""Suspects: requests held by servers that died. A request whose servers died ``ISOLATE_AFTER``
times goes, alone, to the namespace's suspects queue, which every server takes one request at a
time; at the delivery limit it is dead-lettered. The verdict itself is ``policies.verdict``."""

from __future__ import annotations

import asyncio
import logging

from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.server.message import (
    Message,
    died_running,
    new_batch_id,
    without,
)
from atasks.transport.backends.amqp.server.policies import Verdict, verdict
from atasks.transport.backends.amqp.server.state import Shared
from atasks.transport.messages import Request

log = logging.getLogger("atasks.amqp")

SUSPECT_HANDLER_WAIT = 5.0  # seconds a suspect waits for its atask to register (at start)


class Suspects:
    """Judges deliveries by the deaths of servers that held them, and carries out the verdict."""

    def __init__(self, shared: Shared) -> None:
        self.shared = shared

    def verdict(self, message: Message, *, isolated: bool) -> tuple[Verdict, int]:
        """What to do with a delivery given the servers that died holding it (with their count,
        this delivery included). Redelivered, or back from an expired lease, means its last
        server died, was killed or lost its connection while holding it."""
        headers = message.headers
        died = message.redelivered or wire.H_LEASE_HOLDER in headers
        deaths = wire.deaths_now(headers, died=died)
        topology = self.shared.topology
        return verdict(
            deaths=deaths,
            counted=wire.deaths(headers),
            died=died,
            limit=topology.delivery_limit,
            queue_type=topology.queue_type,
            broker_major=self.shared.link.broker_major,
            isolated=isolated,
            unisolated=wire.H_UNISOLATED in headers,
        ), deaths

    async def carry_out(
        self,
        name: str,
        message: Message,
        verdict: Verdict,
        deaths: int,
        requests: list[Request] | None = None,
    ) -> dict[str, asyncio.Event]:
        """Carry out ``verdict`` on ``message``, or on ``requests`` (calls of a batch, which is
        left to settle). Copies of a batch or of its calls reaching this server wait for the
        batch's ack (see ``Settlement.requeue``): the events returned are set then."""
        settlement = self.shared.settlement
        if verdict is Verdict.DEAD:
            log.error(
                "request %s for %r: %d servers died holding it; dead-lettered",
                message.correlation_id,
                name,
                deaths,
            )
            await settlement.dead_letter(
                name,
                message,
                "delivery_limit",
                "atasks.errors.DeliveryLimitExceeded",
                died_running(name, deaths),
                requests,
            )
        elif verdict is Verdict.COUNT:
            headers = {**message.headers, wire.H_DELIVERIES: deaths}
            if requests is None:
                await settlement.requeue(name, message, headers)
            else:  # the copy, should it reach this server, waits for this batch's ack
                batch_id = new_batch_id()
                return await settlement.holding(
                    [batch_id],
                    settlement.publish_copy(name, message, headers, requests, batch_id=batch_id),
                )
        elif requests is None:
            log.info(
                "request %s for %r: %d servers died holding it; it runs alone from now on",
                message.correlation_id,
                name,
                deaths,
            )
            headers = {
                **without(message.headers, wire.H_LEASE_HOLDER, wire.H_UNISOLATED),
                wire.H_DELIVERIES: deaths,
                wire.H_SUSPECT_OF: name,
            }
            await settlement.requeue(name, message, headers, self.shared.topology.suspects_queue)
        else:
            return await self._isolate_calls(name, message, requests, deaths)
        return {}

    async def _isolate_calls(
        self, name: str, message: Message, requests: list[Request], deaths: int
    ) -> dict[str, asyncio.Event]:
        """Queue each of ``requests``, calls of a batch whose servers died holding it, alone in
        the suspects queue (confirmed)."""
        assert message.reply_to is not None
        persistent = message.properties.delivery_mode == wire.PERSISTENT
        log.info(
            "%d calls of a batch of %r: %d servers died holding them; they run alone from now on",
            len(requests),
            name,
            deaths,
        )
        copies = []
        for request in requests:
            properties = wire.request_properties(request, message.reply_to, persistent=persistent)
            properties.headers = {
                **(properties.headers or {}),
                wire.H_DELIVERIES: deaths,
                wire.H_SUSPECT_OF: name,
            }
            copies.append(
                message.confirming.basic_publish(
                    request.body,
                    routing_key=self.shared.topology.suspects_queue,
                    properties=properties,
                )
            )
        return await self.shared.settlement.holding(
            [r.call_id for r in requests], asyncio.gather(*copies)
        )
