"""atasks in a Django process: ``setup()`` with Django's middleware, and ``on_commit()`` to send
a call only once the transaction around it commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

from django.db import transaction

import atasks
from atasks import blocking
from atasks import settings as atasks_settings
from atasks.errors import ConfigurationError
from atasks.lifecycle import make_middleware
from atasks.middleware import Middleware
from atasks.router import Router
from atasks.tasks import ATask
from django_atasks.middleware import CloseOldConnections

log = logging.getLogger("django_atasks")

_loop: asyncio.AbstractEventLoop | None = None
"""The loop ``setup()`` ran in: where ``on_commit`` sends its calls."""
_sending: set[asyncio.Task[Any]] = set()


async def setup(
    *args: Any, middleware: Iterable[Middleware | str] | None = None, **options: Any
) -> Router:
    """``atasks.setup(...)`` for a Django process: the same arguments (settings not given come
    from ``settings.ATASKS``, then the defaults), with ``CloseOldConnections`` outermost on the
    serving side, and this loop remembered for ``on_commit``."""
    global _loop
    given = atasks_settings.value("middleware", middleware) or ()
    chain = [CloseOldConnections(), *(make_middleware(one) for one in given)]
    router = await atasks.setup(*args, middleware=chain, **options)
    _loop = asyncio.get_running_loop()
    return router


def on_commit(
    atask: ATask[..., Any], /, *args: Any, using: str | None = None, **kwargs: Any
) -> None:
    """Call ``atask(*args, **kwargs)`` once the transaction of database ``using`` commits, at
    once outside a transaction, never if it rolls back. Fire and forget: nothing waits for the
    call; a failure is logged (``django_atasks`` logger). Best with ``@atask_queue`` atasks,
    whose call ends once the request is queued.

    Calls go out through the event loop of ``django_atasks.setup()``, else that of
    ``atasks.setup_blocking()`` (in a synchronous, WSGI process): a ``ConfigurationError`` here
    if neither ran, so that no call is lost silently at commit.
    """
    if not isinstance(atask, ATask):
        raise TypeError(f"on_commit() sends an atask, not {atask!r}")
    loop = _sending_loop()
    transaction.on_commit(lambda: _send(loop, atask, args, kwargs), using=using)


def _sending_loop() -> asyncio.AbstractEventLoop:
    for loop in (_loop, blocking._loop):
        if loop is not None and loop.is_running():
            return loop
    raise ConfigurationError(
        "django_atasks.on_commit() sends through atasks' event loop: await "
        "django_atasks.setup() in it first (or call atasks.setup_blocking() in a synchronous "
        "process)"
    )


def _send(
    loop: asyncio.AbstractEventLoop,
    atask: ATask[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> None:
    def start() -> None:
        task = loop.create_task(_call(atask, args, kwargs))
        _sending.add(task)
        task.add_done_callback(_sending.discard)

    if loop.is_closed():
        log.error("%s not sent at commit: atasks' event loop is closed", atask.name)
        return
    loop.call_soon_threadsafe(start)


async def _call(atask: ATask[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    try:
        await atask(*args, **kwargs)
    except Exception:
        log.exception("%s, sent at commit, failed", atask.name)
