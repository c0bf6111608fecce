"""Telling callers of their requests the broker dead-lettered, wherever they wait."""

from __future__ import annotations

import logging

from aiormq.abc import DeliveredMessage

from atasks.errors import DeliveryLimitExceeded
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.backends.amqp.versions import noticed
from atasks.transport.messages import Reply

log = logging.getLogger("atasks.amqp")

# Dead letters whose caller knows already: it timed out, or it got the failure (a scheduled call).
NOT_NOTIFIED = ("expired", "failed")


async def pass_on_dead_letter(topology: Topology, message: DeliveredMessage) -> None:
    """A request the broker dead-lettered: tell its caller, wherever it waits."""
    properties = message.header.properties
    headers = properties.headers or {}
    reason = wire.dead_reason(headers)
    queue = str(headers.get(wire.FIRST_DEATH_QUEUE) or getattr(message.delivery, "routing_key", ""))
    atask = queue.removeprefix(topology.prefix)
    try:
        if properties.reply_to and properties.correlation_id and reason not in NOT_NOTIFIED:
            recorded = wire.last_error(headers)
            log.error(
                "request %s for %r was dead-lettered (%s): %s",
                properties.correlation_id,
                atask,
                reason,
                recorded or f"after {topology.delivery_limit} deliveries",
            )
            error = DeliveryLimitExceeded(
                f"atask {atask!r} was delivered {topology.delivery_limit} times and no "
                "server finished it (each died or lost its connection); it is kept in the "
                f"dead-letter queue {topology.dead_letter_queue!r}"
            )

            def failure(call_id: str) -> Reply:
                reply = Reply.failure(call_id, error)
                if recorded:  # a server dead-lettered it and said why: its caller gets that
                    reply.error_type, _, reply.error_message = recorded.partition(": ")
                return reply

            if properties.message_type == wire.BATCH:  # each of its calls fails
                ids = wire.batch_call_ids(message.body)
                replies = [failure(call_id) for call_id in ids]
                body, reply_properties = wire.pack_replies(replies), wire.replies_properties()
            else:
                reply = failure(properties.correlation_id)
                body, reply_properties = reply.body, wire.reply_properties(reply)
            reply_properties.headers = noticed(reply_properties.headers)  # not a server's word
            await message.channel.basic_publish(
                body, routing_key=properties.reply_to, properties=reply_properties
            )
        await message.channel.basic_ack(message.delivery_tag or 0)
    except CONNECTION_ERRORS as exc:  # unacked: the broker hands it out again
        log.debug("could not pass on a dead letter: %s", describe(exc))
