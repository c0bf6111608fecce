"""Plain-``def`` atasks run in worker threads (``asyncio.to_thread``). What must happen in that
thread around each of them — Django closes its old database connections there, as it does around
a request — is set for the calls a middleware serves with ``around_threaded_atasks``."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from contextvars import ContextVar
from typing import Any, TypeVar

R = TypeVar("R")

Around = Callable[[], AbstractContextManager[Any]]
"""Makes the context manager entered in the worker thread around one plain-``def`` atask."""

_around: ContextVar[tuple[Around, ...]] = ContextVar("atasks_around_threaded", default=())


@contextlib.contextmanager
def around_threaded_atasks(around: Around) -> Iterator[None]:
    """Within this block (a serving middleware's ``proceed``), a plain-``def`` atask runs inside
    ``around()``, entered in its worker thread; blocks nest, the outermost entered first."""
    token = _around.set((*_around.get(), around))
    try:
        yield
    finally:
        _around.reset(token)


def run_threaded(fn: Callable[..., R], args: Any, kwargs: Any) -> R:
    """Run ``fn(*args, **kwargs)`` in this worker thread, inside what the call's middlewares set
    (``asyncio.to_thread`` carries their context here)."""
    arounds = _around.get()
    if not arounds:
        return fn(*args, **kwargs)
    with contextlib.ExitStack() as stack:
        for around in arounds:
            stack.enter_context(around())
        return fn(*args, **kwargs)
