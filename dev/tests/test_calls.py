"""Awaiting atasks, over loopback and over a real RabbitMQ: composition, results, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

import atasks
from atasks import atask
from atasks.errors import EncodeError, JobNotFound, RemoteError
from atasks.router import Router
from atasks.transport.backends.amqp import AMQPTransport


@atask
async def add(a: int, b: int) -> int:
    return a + b


@atask
async def chain(n: int) -> int:
    """Recursion, one level at a time."""
    return 0 if n == 0 else 1 + await chain(n - 1)


@atask
async def tree(depth: int) -> int:
    """Recursive fan-out: 2**(depth+1) - 1 calls."""
    if depth == 0:
        return 1
    left, right = await asyncio.gather(tree(depth - 1), tree(depth - 1))
    return left + right + 1


@atask
async def sequence(n: int) -> list[int]:
    return [await add(i, i) for i in range(n)]


@atask
def blocking_thread_name() -> str:
    return threading.current_thread().name


class Custom(Exception):
    pass


class NeedsTwoArgs(Exception):
    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a} and {b}")


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("holds a lock")
        self.lock = threading.Lock()


@atask
async def fail(kind: str) -> None:
    if kind == "value":
        raise ValueError("bad value")
    if kind == "custom":
        raise Custom("custom failure")
    if kind == "two-args":
        raise NeedsTwoArgs(1, 2)
    if kind == "unpicklable":
        raise Unpicklable()


@atask
async def returns_unpicklable() -> object:
    return threading.Lock()


@atask
async def echo(value: object) -> object:
    return value


async def test_await_returns_the_result(served: Router) -> None:
    assert await add(2, 3) == 5


async def test_gather_create_task_and_wait_for(served: Router) -> None:
    assert await asyncio.gather(*(add(i, 1) for i in range(50))) == list(range(1, 51))
    task = asyncio.create_task(add(1, 1))
    assert await task == 2
    assert await asyncio.ensure_future(add(2, 2)) == 4
    assert await asyncio.wait_for(add(3, 3), timeout=10) == 6


async def test_sequential_awaits_inside_an_atask(served: Router) -> None:
    assert await sequence(20) == [2 * i for i in range(20)]


async def test_deep_recursion(served: Router) -> None:
    assert await chain(300) == 300


async def test_recursive_fan_out_of_thousands(served: Router) -> None:
    assert await tree(11) == 2**12 - 1  # 4095 calls


async def test_plain_def_runs_in_a_thread(served: Router) -> None:
    assert await blocking_thread_name() != threading.main_thread().name


async def test_exception_keeps_type_and_message_with_remote_traceback(served: Router) -> None:
    with pytest.raises(ValueError, match="bad value") as info:
        await fail("value")
    assert "raise ValueError" in info.value.remote_traceback  # type: ignore[attr-defined]
    assert any("Remote traceback" in note for note in info.value.__notes__)
    with pytest.raises(Custom, match="custom failure"):
        await fail("custom")


@pytest.mark.parametrize("kind", ["two-args", "unpicklable"])
async def test_exception_that_cannot_travel_becomes_remote_error(served: Router, kind: str) -> None:
    with pytest.raises(RemoteError) as info:
        await fail(kind)
    assert info.value.type_name.endswith(("NeedsTwoArgs", "Unpicklable"))
    assert info.value.message in ("1 and 2", "holds a lock")
    assert "Traceback" in info.value.remote_traceback


async def test_unpicklable_argument_fails_at_the_caller(served: Router) -> None:
    with pytest.raises(EncodeError, match="lock"):
        await echo(threading.Lock())


async def test_unpicklable_result_is_a_clear_error_and_the_server_goes_on(
    served: Router,
) -> None:
    with pytest.raises(EncodeError, match="returns_unpicklable"):
        await returns_unpicklable()
    assert await add(1, 1) == 2


@atask(namespace="ghost")
async def never_served() -> None: ...


async def test_atask_no_server_serves_is_job_not_found(served: Router) -> None:
    """The "ghost" namespace has a transport but no server anywhere."""
    if isinstance(served.transport, AMQPTransport):
        await atasks.setup("amqp", url=served.transport.url, namespace="ghost")
    else:
        await atasks.setup("loopback", namespace="ghost", serve=False)
    with pytest.raises(JobNotFound, match="never_served"):
        await asyncio.wait_for(never_served(), timeout=1)


async def test_json_codec_rebuilds_builtin_errors_and_reports_the_rest(
    request: pytest.FixtureRequest,
) -> None:
    await atasks.setup("loopback", codec="json")
    assert await echo({"a": [1, 2]}) == {"a": [1, 2]}
    with pytest.raises(ValueError, match="bad value"):
        await fail("value")
    with pytest.raises(RemoteError, match="Custom: custom failure"):
        await fail("custom")
    with pytest.raises(EncodeError):
        await echo({1, 2})
