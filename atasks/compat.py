"""Names kept for code written to upstream atasks 0.0.3, beside the 2019 interface's own
(``atasks.transport.classic`` adapts 2019-style transports; ``atasks.transport.base`` is the
2019 import path of the transport contract, the loopback transport and ``get_transport``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from atasks.errors import JobNotFound
from atasks.namespaces import namespace


class Router0_0_3:
    """The router methods of 0.0.3: each checks that its atask is registered, then serves every
    atask of the namespace, as ``activate`` does."""

    namespace: str

    if TYPE_CHECKING:

        async def activate(self, transport: Any = None) -> None: ...

    async def activate_queue(self, name: str, transport: Any = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    async def activate_broadcast(self, name: str, transport: Any = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    def _registered(self, name: str) -> None:
        if name not in namespace(self.namespace).atasks:
            raise JobNotFound(
                f"no atask {name!r} is registered in namespace {self.namespace!r}: import the "
                "module that defines it first"
            )
