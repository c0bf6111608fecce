"""``atasks.propagate(var)``: marked context variables travel with calls, through the codec, into
nested calls; unmarked ones never do. Over loopback, a broker, and server processes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextvars import ContextVar

import pytest
import workload
from servers import Servers, wait_until_served

import atasks
from atasks import atask
from atasks.errors import ConfigurationError, EncodeError
from atasks.propagation import apply, capture, propagated
from atasks.router import Router

request_id: ContextVar[str] = ContextVar("test_request_id")
tenant: ContextVar[dict[str, int]] = ContextVar("test_tenant")
unmarked: ContextVar[str] = ContextVar("test_unmarked", default="the server's default")


@pytest.fixture(autouse=True)
def marked() -> Iterator[None]:
    atasks.propagate(request_id)
    atasks.propagate(tenant, name="tenant")
    yield
    atasks.unpropagate(request_id)
    atasks.unpropagate(tenant)


@atask
async def seen() -> list[object]:
    return [request_id.get(None), tenant.get(None), unmarked.get()]


@atask
async def seen_nested(levels: int) -> list[object]:
    """What each call of a chain of ``levels`` sees."""
    inner = await seen_nested(levels - 1) if levels > 1 else []
    return [request_id.get(None), *inner]


@atask
async def changes_it() -> str | None:
    request_id.set("set on the server")
    return request_id.get(None)


async def test_marked_variables_travel_and_unmarked_ones_do_not(served: Router) -> None:
    request_id.set("r-1")
    tenant.set({"id": 7})
    unmarked.set("the caller's")
    assert await seen() == ["r-1", {"id": 7}, "the server's default"]


async def test_nested_calls_carry_the_values_on(served: Router) -> None:
    request_id.set("r-2")
    assert await seen_nested(3) == ["r-2", "r-2", "r-2"]


async def test_a_variable_without_a_value_does_not_travel(served: Router) -> None:
    assert await seen() == [None, None, "the server's default"]


async def test_the_server_setting_it_does_not_change_the_callers(served: Router) -> None:
    request_id.set("the caller's")
    assert await changes_it() == "set on the server"
    assert request_id.get() == "the caller's"


async def test_values_go_through_the_namespaces_codec() -> None:
    await atasks.setup("loopback", codec="json")
    tenant.set({"id": 8})
    assert await seen() == [None, {"id": 8}, "the server's default"]
    request_id.set(object())  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="not JSON"):
        await seen()


async def test_a_value_whose_name_no_variable_travels_under_here_is_ignored(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.DEBUG, logger="atasks.propagation"):
        assert apply({"nobody's": 1}) == []
    assert "nobody's" in caplog.text


def test_marking_is_idempotent_and_names_are_unique() -> None:
    assert atasks.propagate(request_id) is request_id
    assert propagated["test_request_id"] is request_id
    with pytest.raises(ConfigurationError, match="already travels as 'test_request_id'"):
        atasks.propagate(ContextVar("test_request_id"))
    other: ContextVar[int] = ContextVar("other")
    atasks.propagate(other, name="renamed")
    try:
        other.set(3)
        assert capture()["renamed"] == 3
    finally:
        atasks.unpropagate(other)
    assert "renamed" not in propagated


async def test_values_travel_to_server_processes_and_their_nested_calls(
    servers: Servers, amqp_url: str
) -> None:
    servers.start()
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    assert await workload.context_seen(1) == [None]
    workload.request_id.set("from the test")
    assert await workload.context_seen(3) == ["from the test"] * 3
