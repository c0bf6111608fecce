"""Middleware: code that runs around every call of a namespace's atasks, in the onion style of
ASGI and aiohttp, on both sides of a call.

``Middleware.call`` runs where an atask is awaited, around encoding, sending and waiting for the
outcome; ``Middleware.serve`` runs where it is served, around running it (its retries
included). Each gets the ``Call`` and ``proceed``, the rest of the chain: ``await
proceed(call)`` and return what it returns (the atask's result), or raise (the call fails with
that exception; on the serving side the caller gets it as any exception of the atask).
The first middleware of a list is the outermost.

atasks' own features that wrap calls (tracing, events, auth, propagation, retries) are
middlewares on the same chain, in ``atasks.middlewares``; they sit around or inside the user's
as ``Router`` documents.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

from atasks.transport.messages import NO_HEADERS

Proceed = Callable[["Call"], Awaitable[Any]]
"""The rest of the chain: ``await proceed(call)``."""

Side = Literal["call", "serve"]


class Call:
    """One call of an atask, as middlewares see it.

    ``atask`` is its name, ``args`` and ``kwargs`` its arguments (a call-side middleware may
    replace them before ``proceed``), ``headers`` short text that travels with the call and
    that the server's middlewares read (a call-side middleware adds entries before
    ``proceed``; on the serving side they are the request's). ``definition`` is the
    ``ATask`` object, ``attempt`` counts the serving side's attempts (``@atask(retry=...)``).
    ``state`` is a dict for middlewares to keep what they need between their steps.
    """

    __slots__ = (
        "_headers",
        "_state",
        "args",
        "atask",
        "attempt",
        "auth",
        "call_id",
        "codec",
        "deadline",
        "definition",
        "events",
        "kwargs",
        "namespace",
        "parent_id",
        "request",
        "scope",
        "span",
        "stream",
        "transport",
        "values",
    )

    def __init__(
        self,
        definition: Any,
        call_id: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        namespace: str,
        parent_id: str | None,
        deadline: float | None,
        headers: Mapping[str, str] = NO_HEADERS,
    ) -> None:
        self.definition = definition
        self.atask: str = definition.name
        self.call_id = call_id
        self.args = args
        self.kwargs = kwargs
        self.namespace = namespace
        self.parent_id = parent_id
        self.deadline = deadline
        self._headers = headers
        self.attempt = 1
        self._state: dict[str, Any] | None = None
        # For atasks' own steps: context values that travel, the auth context, the server's
        # span and event publisher; the codec, transport, caller's scope and stream of the
        # calling side; the request of the serving side.
        self.values: dict[str, Any] | None = None
        self.auth: Any = None
        self.span: Any = None
        self.events: Any = None
        self.codec: Any = None
        self.transport: Any = None
        self.scope: Any = None
        self.stream: Any = None
        self.request: Any = None

    @property
    def headers(self) -> dict[str, str]:
        """The call's headers, a dict to read or (on the calling side) to add to."""
        headers = self._headers
        if not isinstance(headers, dict) or headers is NO_HEADERS:
            headers = self._headers = dict(headers)
        return headers

    @headers.setter
    def headers(self, headers: Mapping[str, str]) -> None:
        self._headers = headers

    @property
    def state(self) -> dict[str, Any]:
        """A dict for middlewares to keep what they need between their steps."""
        state = self._state
        if state is None:
            state = self._state = {}
        return state

    @property
    def sent_headers(self) -> Mapping[str, str]:
        """The headers as they travel: the shared empty mapping when none were added."""
        return self._headers

    def __repr__(self) -> str:
        return f"<Call {self.atask!r} {self.call_id}>"


class Middleware:
    """Base class of middlewares: override ``call``, ``serve`` or both.

    A side left as it is costs nothing: it is not part of that side's chain.
    """

    async def call(self, call: Call, proceed: Proceed) -> Any:
        """Around awaiting an atask, where it is awaited."""
        return await proceed(call)

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        """Around running an atask, where it is served."""
        return await proceed(call)


def overrides(middleware: Middleware, side: Side) -> bool:
    """Whether ``middleware`` does anything on ``side``."""
    return getattr(type(middleware), side) is not getattr(Middleware, side)


def chain(middlewares: Sequence[Middleware], side: Side, innermost: Proceed) -> Proceed:
    """``innermost`` wrapped in each middleware's ``side`` step, the first one outermost."""
    proceed = innermost
    for middleware in reversed(middlewares):
        if overrides(middleware, side):
            proceed = _link(getattr(middleware, side), proceed)
    return proceed


def _link(step: Callable[[Call, Proceed], Awaitable[Any]], inner: Proceed) -> Proceed:
    def proceed(call: Call) -> Awaitable[Any]:
        return step(call, inner)

    return proceed
