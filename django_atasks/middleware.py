"""The serving-side middleware that Django needs around each atask it serves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from asgiref.sync import sync_to_async
from django.db import close_old_connections

from atasks.middleware import Call, Middleware, Proceed
from atasks.threads import around_threaded_atasks


class CloseOldConnections(Middleware):
    """``django.db.close_old_connections()`` before and after each served atask, as Django does
    around each request: a connection past ``CONN_MAX_AGE``, or broken, is not reused.

    It runs in asgiref's thread for synchronous code, the one where Django's async ORM
    (``await Model.objects.aget(...)``) and ``sync_to_async`` code keep their connections, and
    in the worker thread of each plain-``def`` atask, around it.
    ``django_atasks.setup()`` and ``manage.py run_atask`` install it.
    """

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        await _close_old_connections()
        try:
            with around_threaded_atasks(_fresh_connections):  # a plain-def atask's own thread
                return await proceed(call)
        finally:
            await _close_old_connections()


_close_old_connections = sync_to_async(close_old_connections, thread_sensitive=True)


@contextlib.contextmanager
def _fresh_connections() -> Iterator[None]:
    close_old_connections()
    try:
        yield
    finally:
        close_old_connections()
