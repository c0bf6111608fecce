"""Broker pressure: under a memory or disk alarm RabbitMQ blocks the connections that publish
(``connection.blocked``) until the alarm clears (``connection.unblocked``). Meanwhile it stops
reading from them, so publishing waits, and with it every call, each within its deadline.

``Pressure`` says so once each way — a WARNING naming the alarm, an INFO when it clears — and
remembers why, so a call that runs out of time can tell. aiormq handles both frames but offers
no hook: ``watch`` wraps its handlers on one connection and leaves their work to them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("atasks.amqp")

_AIORMQ_BLOCKED = "_Connection__handle_connection_blocked"
_AIORMQ_UNBLOCKED = "_Connection__handle_connection_unblocked"
_AIORMQ_SAYS = ("Connection %r was blocked by: %r", "Connection %r was unblocked")


class Pressure:
    """Whether the broker blocks this link's connection, and why."""

    def __init__(self, where: Callable[[], str]) -> None:
        self._where = where  # the broker's URL, without its password
        self.reason: str | None = None
        self._since = 0.0

    def blocked(self, reason: str) -> None:
        if self.reason is not None:
            return
        self.reason, self._since = reason, time.monotonic()
        log.warning(
            "the broker at %s blocks publishing: %s (a resource alarm); calls wait until it "
            "clears, each within its deadline",
            self._where(),
            reason,
        )

    def unblocked(self) -> None:
        if self.reason is None:
            return
        log.info(
            "the broker at %s takes messages again: %s cleared after %.1fs",
            self._where(),
            self.reason,
            time.monotonic() - self._since,
        )
        self.reason = None

    def lost(self) -> None:
        """The connection is gone; a new one starts unblocked (and is told again if not)."""
        self.reason = None

    def watch(self, connection: Any) -> bool:
        """Hear ``connection.blocked``/``unblocked`` on an aiormq connection; ``False`` if this
        aiormq has no handlers to wrap (then nothing is said, and calls still wait)."""
        on_blocked = getattr(connection, _AIORMQ_BLOCKED, None)
        on_unblocked = getattr(connection, _AIORMQ_UNBLOCKED, None)
        if on_blocked is None or on_unblocked is None:
            log.debug("cannot hear connection.blocked from this aiormq")
            return False
        setattr(connection, _AIORMQ_BLOCKED, self._wrap(on_blocked, self._on_blocked))
        setattr(connection, _AIORMQ_UNBLOCKED, self._wrap(on_unblocked, self._on_unblocked))
        _quiet_aiormq()
        return True

    def _on_blocked(self, frame: Any) -> None:
        self.blocked(str(getattr(frame, "reason", "") or "no reason given"))

    def _on_unblocked(self, _frame: Any) -> None:
        self.unblocked()

    @staticmethod
    def _wrap(
        handler: Callable[[Any], Awaitable[None]], ours: Callable[[Any], None]
    ) -> Callable[[Any], Awaitable[None]]:
        async def handle(frame: Any) -> None:
            await handler(frame)
            ours(frame)

        return handle


class _Said(logging.Filter):
    """Drops aiormq's own lines about blocking: ``Pressure`` says it, once, in our words."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in _AIORMQ_SAYS


_filter = _Said()


def _quiet_aiormq() -> None:
    logger = logging.getLogger("aiormq.connection")
    if _filter not in logger.filters:
        logger.addFilter(_filter)
