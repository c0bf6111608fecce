"""``atasks run --health-port``: ``/livez`` and ``/readyz`` for Kubernetes probes and load
balancers; with ``--metrics-port``, ``/metrics`` too (``atasks.metrics``).

- ``/livez``: 200 whenever the process's event loop answers (a stuck loop does not).
- ``/readyz``: 200 once the server serves (every namespace connected and consuming its queues),
  503 with the reason while it starts, while a transport has lost its broker (until it is back
  and consuming again) and once it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from atasks.endpoints import TEXT, Answer, Route, serve_endpoints

if TYPE_CHECKING:
    from atasks.transport.contract import Transport

log = logging.getLogger("atasks.health")


class Health:
    """What ``/livez`` and ``/readyz`` answer for this process."""

    def __init__(self) -> None:
        self.transports: Sequence[Transport] = ()
        self.serving = False
        self.stopping = False

    def unready(self) -> str | None:
        """Why this server is not ready, or ``None`` when it is."""
        if self.stopping:
            return "stopping"
        if not self.serving:
            return "starting: not serving yet"
        for transport in self.transports:
            if not transport.connected:
                return f"{transport!r} lost its broker: reconnecting"
        return None

    async def livez(self) -> Answer:
        return 200, TEXT, b"alive\n"

    async def readyz(self) -> Answer:
        why = self.unready()
        if why is None:
            return 200, TEXT, b"ready\n"
        return 503, TEXT, f"not ready: {why}\n".encode()

    def routes(self) -> dict[str, Route]:
        return {"/livez": self.livez, "/readyz": self.readyz}


class Endpoints:
    """The HTTP servers of one ``atasks run`` process: health and metrics, on one port when
    both are given the same."""

    def __init__(self) -> None:
        self.health = Health()
        self._servers: list[asyncio.Server] = []

    async def start(
        self, host: str, health_port: int | None, metrics: tuple[int, Route] | None
    ) -> None:
        ports: dict[int, dict[str, Route]] = {}
        if health_port is not None:
            ports.setdefault(health_port, {}).update(self.health.routes())
        if metrics is not None:
            ports.setdefault(metrics[0], {})["/metrics"] = metrics[1]
        try:
            for port, routes in ports.items():
                server = await serve_endpoints(host, port, routes)
                self._servers.append(server)
                log.info("serving %s on %s:%d", ", ".join(sorted(routes)), host, port)
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        self.health.stopping = True
        servers, self._servers = self._servers, []
        for server in servers:
            server.close()
        for server in servers:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await server.wait_closed()
