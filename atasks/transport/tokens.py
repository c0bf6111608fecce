"""Fleet-wide tokens, as a transport provides them: ``size`` tokens per name, shared by every
process of a namespace. Holding one is the right to run one limited call (``@atask(limit=N)``)
or to be inside a lock (``atasks.lock``). A holder that dies gives its tokens back without
anyone's help; how, is the transport's business (docs: guides/fleet-limits.md).
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from dataclasses import dataclass


class Token(ABC):
    """One token, held until ``release()`` (idempotent)."""

    @abstractmethod
    async def release(self) -> None:
        """Give the token back for the next taker."""


@dataclass(frozen=True, slots=True)
class TokenCount:
    """What ``Tokens.count`` sees of one name: tokens free, and processes waiting for one
    (``None`` where the transport cannot tell)."""

    name: str
    free: int
    waiting: int | None


class Tokens(ABC):
    """The token pools of one namespace.

    ``take(name, size)`` waits for one of ``size`` tokens of ``name``: the first taker makes the
    pool, exactly ``size`` tokens whoever else starts at the same time. A taker with another
    ``size`` changes it: more tokens are added at once; when it shrinks, the extra tokens go
    away as their holders give them back.
    """

    @abstractmethod
    async def take(self, name: str, size: int) -> Token:
        """Wait for a token of ``name`` (``size`` of them in all) and return it, held."""

    @abstractmethod
    async def spend(self, name: str, size: int, period: float) -> None:
        """Wait for a token of ``name`` (``size`` of them) and spend it: it comes back by
        itself ``period`` seconds later. So at most ``size`` spend in any ``period``."""

    async def close(self) -> None:  # noqa: B027 - most have nothing to close
        """Forget every pool (tokens held are given back by their holders)."""


def _give_back(token: _LocalToken) -> None:
    semaphore, token._semaphore = token._semaphore, None
    if semaphore is not None:
        semaphore.release()


class _LocalToken(Token):
    __slots__ = ("_semaphore",)

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self._semaphore: asyncio.Semaphore | None = semaphore

    async def release(self) -> None:
        semaphore, self._semaphore = self._semaphore, None
        if semaphore is not None:
            semaphore.release()


class LocalTokens(Tokens):
    """Tokens of one process: an ``asyncio.Semaphore`` per name (the loopback transport's, whose
    calls never leave the process)."""

    def __init__(self) -> None:
        self._pools: dict[str, tuple[int, asyncio.Semaphore]] = {}

    async def take(self, name: str, size: int) -> _LocalToken:
        if size < 1:
            raise ValueError(f"a token pool has at least one token, not {size}")
        found = self._pools.get(name)
        if found is None or found[0] != size:
            # A new size starts a new pool; holders of the old one give theirs back to it.
            found = self._pools[name] = (size, asyncio.Semaphore(size))
        semaphore = found[1]
        await semaphore.acquire()
        return _LocalToken(semaphore)

    async def spend(self, name: str, size: int, period: float) -> None:
        if period <= 0:
            raise ValueError(f"a rate's period is > 0 seconds, not {period!r}")
        token = await self.take(name, size)
        asyncio.get_running_loop().call_later(period, _give_back, token)

    def count(self, name: str) -> TokenCount | None:
        """What is free and waiting in pool ``name`` (``None``: no such pool)."""
        found = self._pools.get(name)
        if found is None:
            return None
        semaphore = found[1]
        waiters = getattr(semaphore, "_waiters", None) or ()
        return TokenCount(name, semaphore._value, len(waiters))

    async def close(self) -> None:
        self._pools.clear()
