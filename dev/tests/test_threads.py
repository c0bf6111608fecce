"""What a serving middleware sets around plain-``def`` atasks is entered in their worker thread
(``atasks.threads``)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

import atasks
from atasks.middleware import Call, Middleware, Proceed
from atasks.threads import around_threaded_atasks

entered: list[tuple[str, int]] = []


def around(name: str) -> Any:
    @contextlib.contextmanager
    def entering() -> Iterator[None]:
        entered.append((f"enter {name}", threading.get_ident()))
        try:
            yield
        finally:
            entered.append((f"exit {name}", threading.get_ident()))

    return entering


class Around(Middleware):
    def __init__(self, name: str) -> None:
        self.name = name

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        with around_threaded_atasks(around(self.name)):
            return await proceed(call)


@atasks.atask(namespace="threads")
def blocking() -> int:
    entered.append(("run", threading.get_ident()))
    return threading.get_ident()


@atasks.atask(namespace="threads")
async def not_blocking() -> int:
    return threading.get_ident()


async def test_a_plain_def_atask_runs_inside_what_its_middlewares_set_in_its_thread() -> None:
    await atasks.setup(
        "loopback", namespace="threads", middleware=[Around("outer"), Around("inner")]
    )
    entered.clear()
    thread = await blocking()
    assert thread != threading.get_ident()
    assert entered == [
        ("enter outer", thread),
        ("enter inner", thread),
        ("run", thread),
        ("exit inner", thread),
        ("exit outer", thread),
    ]
    entered.clear()
    assert await not_blocking() == threading.get_ident()  # a coroutine: nothing entered
    assert entered == []
    await atasks.close("threads")
