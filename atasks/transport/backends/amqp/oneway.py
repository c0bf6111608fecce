"""Requests published without a reply: fire-and-forget requests and broadcasts, confirmed."""

from __future__ import annotations

import asyncio

import aiormq

from atasks.errors import EncodeError, JobNotFound, TransportError
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, Link, describe
from atasks.transport.backends.amqp.topology import Topology, declare_all
from atasks.transport.messages import Request

REFUSALS = 4  # a request the broker refuses this many times in a row fails
REFUSED_WAIT = 0.1  # seconds before publishing a refused request again, times the refusals


async def publish_one_way(
    link: Link,
    topology: Topology,
    declared: set[str],
    request: Request,
    exchange: str,
    routing_key: str,
    what: str,
) -> None:
    """Publish ``request`` (confirmed) with no reply: to ``routing_key`` on ``exchange``, or to
    its atask's queue (``exchange`` empty), declared first unless in ``declared`` (the queues
    declared on this connection). Refused: tried again, then ``JobNotFound`` or
    ``TransportError``; not confirmed (the connection was lost): published again."""
    channels = await link.ready()
    size, limit = len(request.body), link.max_message_size
    if size > limit:
        raise EncodeError(
            f"the arguments of atask {request.name!r} are {size} bytes, over the "
            f"{limit}-byte message size limit"
        )
    queued = not exchange
    properties = wire.request_properties(
        request, None, persistent=queued and topology.queue_type == "classic"
    )
    refusals = 0
    while True:
        try:
            if queued and request.name not in declared:
                await declare_all(channels.connection, topology, [request.name])
                declared.add(request.name)
            await channels.calls_raw.basic_publish(
                request.body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
            )
            return
        except aiormq.exceptions.PublishError:
            if queued:  # its queue was deleted since: declare it again
                declared.discard(request.name)
                refusals += 1
                if refusals < REFUSALS:
                    continue
            raise JobNotFound(
                f"no server serves atask {request.name!r} in namespace "
                f"{topology.namespace!r} right now: nobody got the {what}"
            ) from None
        except aiormq.exceptions.DeliveryError as exc:
            refusals = await after_refusal(refusals, what, exc)
        except CONNECTION_ERRORS:
            # Unconfirmed: publish it again once reconnected (at least once).
            channels = await link.renewed(channels)


async def after_refusal(refusals: int, what: str, exc: Exception) -> int:
    """One more refusal of a publish, counted: wait before the next try, or fail at
    ``REFUSALS``. A quorum queue refuses messages for a moment while it is being declared; a
    full one goes on refusing them."""
    refusals += 1
    if refusals >= REFUSALS:
        raise TransportError(
            f"the broker refused the {what} {refusals} times: {describe(exc)}"
        ) from exc
    await asyncio.sleep(REFUSED_WAIT * refusals)
    return refusals
