"""Middlewares: user code around every call, where it is awaited and where it runs, over
loopback and each broker; a middleware that raises fails its call and nothing else."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import atasks
from atasks import Call, Middleware, Proceed, atask
from atasks.middleware import chain
from atasks.router import Router

seen: list[tuple[str, str, Any]] = []


@atask
async def greet(name: str) -> str:
    return f"hello {name}"


@atask
async def whose() -> str | None:
    return tenant_seen.get(atasks.current_call_id() or "")


@atask(retry=atasks.Retry(attempts=3, backoff=atasks.Backoff.constant(0)))
async def flaky(key: str) -> int:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 3:
        raise ConnectionError(f"attempt {attempts[key]}")
    return attempts[key]


tenant_seen: dict[str, str] = {}
attempts: dict[str, int] = {}


class Timing(Middleware):
    """Records each call on both sides, with its outcome."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def call(self, call: Call, proceed: Proceed) -> Any:
        try:
            result = await proceed(call)
        except Exception as exc:
            self.calls.append(("call", call.atask, type(exc).__name__))
            raise
        self.calls.append(("call", call.atask, "ok"))
        return result

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        result = await proceed(call)
        self.calls.append(("serve", call.atask, f"attempt {call.attempt}"))
        return result


class Tenant(Middleware):
    """Adds a header where a call is made, and reads it where it runs."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    async def call(self, call: Call, proceed: Proceed) -> Any:
        call.headers["x-tenant"] = self.tenant
        return await proceed(call)

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        tenant_seen[call.call_id] = call.headers.get("x-tenant", "")
        return await proceed(call)


class Shout(Middleware):
    """Changes the arguments before they travel, and the result where it runs."""

    async def call(self, call: Call, proceed: Proceed) -> Any:
        call.args = [str(call.args[0]).upper()]
        return await proceed(call)

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        return f"{await proceed(call)}!"


class Refuse(Middleware):
    def __init__(self, side: str) -> None:
        self.side = side

    async def call(self, call: Call, proceed: Proceed) -> Any:
        if self.side == "call":
            raise PermissionError(f"no calls of {call.atask}")
        return await proceed(call)

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        if self.side == "serve" and call.args == ["mallory"]:
            raise PermissionError(f"{call.args[0]} may not run {call.atask}")
        return await proceed(call)


async def test_both_sides_wrap_every_call_and_a_header_travels(served: Router) -> None:
    timing = Timing()
    served.add_middleware(timing)
    served.add_middleware(Tenant("acme"))
    assert await greet("ada") == "hello ada"
    assert await whose() == "acme"
    assert timing.calls == [
        ("serve", greet.name, "attempt 1"),
        ("call", greet.name, "ok"),
        ("serve", whose.name, "attempt 1"),
        ("call", whose.name, "ok"),
    ]


async def test_the_first_middleware_is_the_outermost(served: Router) -> None:
    order: list[str] = []

    class Mark(Middleware):
        def __init__(self, name: str) -> None:
            self.name = name

        async def call(self, call: Call, proceed: Proceed) -> Any:
            order.append(f"call {self.name} in")
            result = await proceed(call)
            order.append(f"call {self.name} out")
            return result

        async def serve(self, call: Call, proceed: Proceed) -> Any:
            order.append(f"serve {self.name}")
            return await proceed(call)

    served.add_middleware(Mark("a"))
    served.add_middleware(Mark("b"))
    await greet("x")
    assert order == [
        "call a in",
        "call b in",
        "serve a",
        "serve b",
        "call b out",
        "call a out",
    ]


async def test_middlewares_change_what_travels_and_what_comes_back(served: Router) -> None:
    served.add_middleware(Shout())
    assert await greet("ada") == "hello ADA!"


async def test_a_middleware_raising_where_the_call_is_made_fails_only_that_call(
    served: Router,
) -> None:
    timing = Timing()
    served.add_middleware(timing)
    served.add_middleware(Refuse("call"))
    with pytest.raises(PermissionError, match="no calls of"):
        await greet("ada")
    assert timing.calls == [("call", greet.name, "PermissionError")]  # nothing was served


async def test_a_middleware_raising_where_the_call_runs_fails_it_for_the_caller(
    served: Router,
) -> None:
    served.add_middleware(Refuse("serve"))
    with pytest.raises(PermissionError, match="mallory may not run"):
        await greet("mallory")
    assert await greet("ada") == "hello ada"  # the server goes on
    assert served.statistics().failed == 1


async def test_a_serving_middleware_sees_each_attempt_of_a_retried_call(served: Router) -> None:
    timing = Timing()
    served.add_middleware(timing)
    key = f"{served.transport!r}"
    assert await flaky(key) == 3
    assert ("serve", flaky.name, "attempt 3") in timing.calls
    assert served.statistics().retried == 2


async def test_setup_takes_middlewares() -> None:
    timing = Timing()
    router = await atasks.setup("loopback", middleware=[timing])
    try:
        assert router.middleware == (timing,)
        assert await greet("ada") == "hello ada"
        assert [side for side, _, _ in timing.calls] == ["serve", "call"]
    finally:
        await atasks.close()


async def test_fire_and_forget_calls_go_through_the_call_side_too(served: Router) -> None:
    served.add_middleware(Tenant("queued"))
    done = asyncio.Event()
    ids: list[str] = []

    @atask(name="test_middleware.queued")
    async def queued() -> None:
        ids.append(tenant_seen.get(atasks.current_call_id() or "", ""))
        done.set()

    await served.enqueue(queued, (), {})
    async with asyncio.timeout(10):
        await done.wait()
    assert ids == ["queued"]


def test_add_middleware_takes_only_middlewares() -> None:
    router = atasks.get_router("test_middleware.types")
    with pytest.raises(TypeError, match=r"atasks\.Middleware"):
        router.add_middleware(lambda call, proceed: proceed(call))  # type: ignore[arg-type]


async def test_a_side_a_middleware_leaves_alone_is_not_in_its_chain() -> None:
    class CallOnly(Middleware):
        async def call(self, call: Call, proceed: Proceed) -> Any:
            return await proceed(call)

    async def innermost(call: Call) -> str:
        return "inner"

    middlewares = [CallOnly()]
    assert chain(middlewares, "serve", innermost) is innermost
    assert chain(middlewares, "call", innermost) is not innermost
    call = Call(greet, "id", ["x"], {}, "default", None, None)
    assert await chain(middlewares, "call", innermost)(call) == "inner"


class Counting(Middleware):
    """Made by name from ATASKS_MIDDLEWARE."""

    made: list[Counting] = []

    def __init__(self) -> None:
        Counting.made.append(self)
        self.served = 0

    async def serve(self, call: Call, proceed: Proceed) -> Any:
        self.served += 1
        return await proceed(call)


async def test_setup_makes_the_middlewares_atasks_middleware_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ATASKS_MIDDLEWARE", f"{__name__}:Counting, {__name__}:Timing")
    Counting.made.clear()
    router = await atasks.setup("loopback")
    try:
        (counting,) = Counting.made
        assert [type(one) for one in router.middleware] == [Counting, Timing]
        assert await greet("ada") == "hello ada"
        assert counting.served == 1
    finally:
        await atasks.close()


@pytest.mark.parametrize(
    ("names", "error"),
    [
        ("nonsense", "not module:Class"),
        (f"{__name__}:Nowhere", "has no attribute"),
        ("atasks.errors:ATasksError", "is not an atasks.Middleware"),
    ],
)
async def test_a_bad_atasks_middleware_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, names: str, error: str
) -> None:
    monkeypatch.setenv("ATASKS_MIDDLEWARE", names)
    with pytest.raises(atasks.ConfigurationError, match=error):
        await atasks.setup("loopback")
    await atasks.close()
