"""Handler classes for dev/tests/test_handlers.py, served in-process and by ``atasks run``."""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator

import atasks

made: list[Mailer] = []
"""Every ``Mailer`` its factory made in this process."""


class Outbox:
    """A dependency the factory injects."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.sent: list[str] = []


def make_mailer() -> Mailer:
    mailer = Mailer(Outbox(f"mx-{os.getpid()}"))
    made.append(mailer)
    return mailer


@atasks.handler(factory=make_mailer)
class Mailer:
    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    @atasks.atask
    async def send(self, to: str, *, subject: str = "hi") -> str:
        self.outbox.sent.append(to)
        return f"{subject} to {to} via {self.outbox.host}"

    @atasks.atask
    def sent(self) -> list[str]:
        """A plain def: runs in a pool thread, on the same instance."""
        assert threading.current_thread() is not threading.main_thread()
        return list(self.outbox.sent)

    @atasks.atask
    async def countdown(self, n: int) -> AsyncIterator[str]:
        for left in range(n, 0, -1):
            yield f"{self.outbox.host}:{left}"

    @atasks.atask
    async def whoami(self) -> tuple[int, int]:
        """This server's pid and the instance's identity."""
        return os.getpid(), id(self)


@atasks.handler
class Counter:
    """No factory: made with its no-argument constructor."""

    def __init__(self) -> None:
        self.count = 0

    @atasks.atask
    async def bump(self) -> int:
        self.count += 1
        return self.count
