"""atasks in an ASGI application (FastAPI, Starlette): ``atasks.asgi.lifespan`` sets atasks up
when the application starts and closes it when the application stops.

    app = FastAPI(lifespan=atasks.asgi.lifespan())

The application's own lifespan, if it has one, runs inside atasks' (atasks is there for all of
it): ``lifespan(my_lifespan, transport="amqp")``. Nothing here imports a framework: the helper
is the ``lifespan(app)`` context manager that Starlette and FastAPI take.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from atasks.lifecycle import close, setup
from atasks.settings import DEFAULT_GRACE, DEFAULT_NAMESPACE

Lifespan = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]
"""What Starlette and FastAPI take as ``lifespan=``: ``lifespan(app)``, an async context manager
whose value (a mapping or ``None``) becomes the application's state."""


def lifespan(
    wrapped: Lifespan | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    grace: float = DEFAULT_GRACE,
    **setup_options: Any,
) -> Lifespan:
    """A lifespan that runs ``atasks.setup(namespace=namespace, **setup_options)`` at startup
    and ``atasks.close(namespace, grace=grace)`` at shutdown, around ``wrapped`` (the
    application's own lifespan, whose state it passes on).

    Settings not given come from the ``ATASKS_*`` variables, as for ``setup()``: with none, the
    loopback transport (the application's process serves its own atasks); with
    ``ATASKS_TRANSPORT=amqp`` and ``ATASKS_URL``, calls go to the servers behind the broker. A
    setup that fails (a bad setting, a broker that cannot be reached) fails the startup.
    """

    @contextlib.asynccontextmanager
    async def run(app: Any) -> AsyncIterator[Any]:
        await setup(namespace=namespace, **setup_options)
        try:
            if wrapped is None:
                yield None
            else:
                async with wrapped(app) as state:
                    yield state
        finally:
            await close(namespace, grace=grace)

    return run
