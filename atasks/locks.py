"""``async with atasks.lock(name)``: a lock held by one process of a namespace at a time, on the
same fleet-wide tokens as ``@atask(limit=...)`` (a pool of one token, ``lock.<name>``)."""

from __future__ import annotations

import asyncio
from types import TracebackType

from atasks.errors import ConfigurationError
from atasks.namespaces import get_transport
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT
from atasks.transport.tokens import Token


def lock_key(name: str) -> str:
    """The token pool of lock ``name``."""
    return f"lock.{name}"


class lock:  # used as a function: ``async with atasks.lock(name)``
    """``async with atasks.lock(name, ttl=..., wait=...)``: the block runs while this process
    holds lock ``name`` of ``namespace``, and no other process of the namespace holds it.

    ``wait``: seconds to wait for the lock before ``TimeoutError`` (default: as long as it
    takes). ``ttl``: the most seconds the block may hold it; past that, the block is cancelled,
    the lock released and ``TimeoutError`` raised. A process that dies holding the lock releases
    it with its connection (over RabbitMQ: as soon as the broker sees the connection close, or
    misses its heartbeats). Not reentrant: a block taking the same lock again waits for itself.
    """

    def __init__(
        self,
        name: str,
        ttl: float | None = None,
        *,
        wait: float | None = None,
        namespace: str = DEFAULT,
    ) -> None:
        if not name:
            raise ValueError("a lock needs a name")
        for what, value in (("ttl", ttl), ("wait", wait)):
            if value is not None and value <= 0:
                raise ValueError(f"lock {what} is a number of seconds > 0, not {value!r}")
        self.name = name
        self.ttl = ttl
        self.wait = wait
        self.namespace = namespace
        self._token: Token | None = None
        self._timeout: asyncio.Timeout | None = None

    async def __aenter__(self) -> lock:
        if self._token is not None:
            raise RuntimeError(f"lock {self.name!r} is already held by this object")
        transport = get_transport(self.namespace)
        tokens = transport.tokens()
        if tokens is None:
            raise ConfigurationError(f"{transport!r} has no fleet-wide tokens to lock with")
        try:
            async with asyncio.timeout(self.wait):
                self._token = await tokens.take(lock_key(self.name), 1)
        except TimeoutError:
            raise TimeoutError(f"lock {self.name!r} was not free within {self.wait:g}s") from None
        if self.ttl is not None:
            self._timeout = asyncio.timeout(self.ttl)
            await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        timeout, self._timeout = self._timeout, None
        token, self._token = self._token, None
        try:
            if timeout is not None:
                try:
                    await timeout.__aexit__(exc_type, exc, tb)
                except TimeoutError:
                    raise TimeoutError(
                        f"held lock {self.name!r} past its ttl of {self.ttl:g}s"
                    ) from None
        finally:
            if token is not None:
                await token.release()

    @property
    def held(self) -> bool:
        """Whether this object holds the lock now."""
        return self._token is not None
