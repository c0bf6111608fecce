"""Requests a server cannot read (a newer wire version, a message type or a need it does not
know, see ``versions``): dead-lettered as ``rejected`` with a reason naming both versions —
never dropped, never run half understood. A caller waiting for it is told that reason, as of
any dead letter (``dead_notices``), and the dead letter can be replayed once servers that read
it run (``atasks dead replay``)."""

from __future__ import annotations

import logging

import aiormq

from atasks.errors import WireVersionError, type_name
from atasks.transport.backends.amqp.connection import CONNECTION_ERRORS, describe
from atasks.transport.backends.amqp.intake import Intake
from atasks.transport.backends.amqp.server.message import Message, suspect_of
from atasks.transport.backends.amqp.server.state import Shared

log = logging.getLogger("atasks.amqp")


async def refuse_unreadable(shared: Shared, reason: str, intake: Intake, message: Message) -> None:
    """Dead-letter ``message``, taken from ``intake``, with ``WireVersionError`` and ``reason``."""
    name = suspect_of(message) if intake is shared.suspects else intake.name
    await refuse(shared, name, reason, message)


async def refuse(shared: Shared, name: str, reason: str, message: Message) -> None:
    """Dead-letter ``message``, a request of atask ``name``, with ``WireVersionError`` and
    ``reason``."""
    error = WireVersionError(f"atask {name!r}: {reason}")
    log.warning("dead-lettered request %s: %s", message.correlation_id, error)
    try:
        await shared.settlement.dead_letter(name, message, "rejected", type_name(error), str(error))
    except aiormq.exceptions.DeliveryError as exc:  # kept in its queue: nothing lost
        log.warning("the broker refused the dead letter of %s: %s", message.correlation_id, exc)
        await message.nack(requeue=True)
    except CONNECTION_ERRORS as exc:  # unacked: the broker delivers it again
        log.debug("could not dead-letter %s: %s", message.correlation_id, describe(exc))
