"""Await atasks from synchronous code: a background event loop shared by every thread.

atasks.setup_blocking("amqp", url="amqp://guest:guest@127.0.0.1:5672/")
thumbnail = atasks.run_sync(resize(7, 128), timeout=5)
for row in atasks.iter_sync(export("2026")): ...
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from atasks.calls import deadline
from atasks.errors import ConfigurationError
from atasks.lifecycle import close, setup
from atasks.streams import RemoteStream

T = TypeVar("T")

SHUTDOWN_TIMEOUT = 10.0
_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_thread: threading.Thread | None = None


def setup_blocking(*args: Any, **kwargs: Any) -> None:
    """``atasks.setup(...)`` in a background event loop, for synchronous callers.

    Takes the same arguments as ``atasks.setup``. The loop runs in a daemon thread and is shut
    down cleanly at interpreter exit (or by ``close_blocking()``).
    """
    global _loop, _thread
    with _lock:
        if _loop is None:
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def run() -> None:
                asyncio.set_event_loop(loop)
                loop.call_soon(ready.set)
                loop.run_forever()

            thread = threading.Thread(target=run, name="atasks-loop", daemon=True)
            thread.start()
            ready.wait()
            _loop, _thread = loop, thread
            atexit.register(close_blocking)
        loop = _loop
    asyncio.run_coroutine_threadsafe(setup(*args, **kwargs), loop).result()


def _background_loop(what: str, instead: str) -> asyncio.AbstractEventLoop:
    """The background loop, or a clear error where a synchronous caller cannot block."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            f"atasks.{what}() blocks, so it cannot run inside an event loop: {instead}"
        )
    loop = _loop
    if loop is None or not loop.is_running():
        raise ConfigurationError(
            f"atasks.{what}() needs a background loop: call atasks.setup_blocking() first"
        )
    return loop


def iter_sync(stream: RemoteStream[T], timeout: float | None = None) -> Iterator[T]:
    """Iterate a streaming atask's call from synchronous code: ``for row in
    atasks.iter_sync(export(query)):``. Leaving the loop early (``break``, an exception) closes
    the remote generator. ``timeout`` (seconds) is a deadline for the whole stream, as with
    ``atasks.deadline()``. Inside a running event loop, use ``async for`` instead."""
    loop = _background_loop("iter_sync", "iterate with async for")
    first = True
    try:
        while True:
            step = _step(stream, timeout if first else None)
            first = False
            done, item = asyncio.run_coroutine_threadsafe(step, loop).result()
            if done:
                return
            yield item
    finally:
        closing = asyncio.run_coroutine_threadsafe(stream.aclose(), loop)
        try:
            closing.result(SHUTDOWN_TIMEOUT)
        except concurrent.futures.TimeoutError:
            closing.cancel()


async def _step(stream: RemoteStream[T], seconds: float | None) -> tuple[bool, Any]:
    """The next item, as ``(False, item)``, or ``(True, None)`` at the end. The first step
    starts the call, inside ``deadline(seconds)`` when given, so the deadline travels with it."""
    try:
        if seconds is None:
            return False, await anext(stream)
        async with deadline(seconds):
            return False, await anext(stream)
    except StopAsyncIteration:
        return True, None


def run_sync(awaitable: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run an atask call from synchronous code and block for its result.

    ``timeout`` (seconds) is a deadline that travels with the call, as with
    ``atasks.deadline()``: on expiry ``TimeoutError`` is raised and the remote call cancelled.
    Safe from any number of threads. Inside a running event loop, ``await`` instead.
    """
    try:
        loop = _background_loop("run_sync", "await the atask")
    except BaseException:
        awaitable.close()
        raise
    future = asyncio.run_coroutine_threadsafe(_within(awaitable, timeout), loop)
    try:
        # The deadline ends the call in the loop; the margin only guards against a stuck loop.
        return future.result(None if timeout is None else timeout + 5)
    except concurrent.futures.TimeoutError:
        if future.done():  # the call's own TimeoutError (its deadline, or a remote one)
            raise
        future.cancel()
        raise TimeoutError("the atasks event loop did not answer in time") from None
    except BaseException:
        future.cancel()  # e.g. KeyboardInterrupt while waiting: cancel the remote call too
        raise


async def _within(awaitable: Coroutine[Any, Any, T], seconds: float | None) -> T:
    if seconds is None:
        return await awaitable
    async with deadline(seconds):
        return await awaitable


def close_blocking() -> None:
    """Close every namespace and stop the background loop. Idempotent; bounded in time."""
    global _loop, _thread
    with _lock:
        loop, thread, _loop, _thread = _loop, _thread, None, None
    if loop is None or thread is None:
        return
    try:
        asyncio.run_coroutine_threadsafe(close(grace=1), loop).result(SHUTDOWN_TIMEOUT)
    except Exception:  # closing must not fail the interpreter's exit
        pass
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(SHUTDOWN_TIMEOUT)
        if not thread.is_alive():
            loop.close()
