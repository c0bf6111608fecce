"""The auth context (``atasks.auth``) of calls: checked where a call is made, and in force
where it runs.

The snapshot is signed over the encoded request, so the calling side's signature is made where
the request is (``auth_context.stamp``), and the serving side verifies it before decoding
anything (``auth_context.admit``): those two stay at the edge of the codec. The middlewares
carry the context between those edges and the atask.
"""

from __future__ import annotations

from typing import Any

from atasks.auth_context import auth_var
from atasks.middleware import Call, Middleware, Proceed


class Stamp(Middleware):
    """Call side: the auth context in force travels with the call, signed."""

    async def call(self, call: Call, proceed: Proceed) -> Any:
        call.auth = auth_var.get()
        return await proceed(call)


class InForce(Middleware):
    """Serve side: only what the request carries is in force while the atask runs; a server's
    own context (over AMQP, copied from whoever opened the connection) never lends its auth to
    a call."""

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        token = auth_var.set(call.auth)
        try:
            return await proceed(call)
        finally:
            auth_var.reset(token)
