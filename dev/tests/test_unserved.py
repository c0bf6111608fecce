"""A caller says when its calls wait on a request queue no server consumes (``unserved.py``):
the decisions without a broker, then the watchdog on a real one."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator

import pytest
from servers import delete_queues, until

import atasks
from atasks import atask
from atasks.namespaces import namespace
from atasks.transport.backends.amqp import AMQPTransport, unserved
from atasks.transport.backends.amqp.unserved import Unserved, Watchdog

NS = "unserved"
WAIT = 0.4  # the watchdog's wait in these tests, for speed (WAIT is 5 s)


@atask(namespace=NS)
async def lonely(value: int) -> int:
    return value + 1


@atask(namespace=NS)
async def held(name: str) -> str:
    await _gates[name].wait()
    return name


_gates: dict[str, asyncio.Event] = {}  # made in each test: an event belongs to one loop


# The decisions.


def test_an_atask_is_checked_once_a_call_has_waited_long_enough() -> None:
    policy = Unserved(wait=5)
    assert policy.due(100.0, {"a1": "a"}) == []
    assert policy.due(104.9, {"a1": "a", "b1": "b"}) == []
    assert policy.due(105.0, {"a1": "a", "b1": "b", "a2": "a"}) == ["a"]
    assert policy.due(110.0, {"a1": "a", "b1": "b", "a2": "a"}) == ["a", "b"]


def test_a_call_that_ended_is_forgotten() -> None:
    policy = Unserved(wait=5)
    assert policy.due(100.0, {"a1": "a"}) == []
    assert policy.due(102.0, {}) == []
    assert policy.due(106.0, {"a1": "a"}) == []  # the same id again counts from now
    assert policy.due(111.0, {"a1": "a"}) == ["a"]


def test_a_call_found_served_is_not_checked_again() -> None:
    policy = Unserved(wait=5)
    assert policy.due(100.0, {"a1": "a"}) == []
    assert policy.due(105.0, {"a1": "a"}) == ["a"]
    assert policy.checked("a", 1) is False
    assert policy.due(110.0, {"a1": "a"}) == []  # a long call: checked once
    assert policy.due(115.0, {"a1": "a", "a2": "a"}) == []
    assert policy.due(120.0, {"a1": "a", "a2": "a"}) == ["a"]  # a new call waited
    assert policy.checked("a", 0) is True  # and the server had gone meanwhile
    assert policy.due(121.0, {"a1": "a", "a2": "a"}) == ["a"]  # warned: watched


def test_one_warning_until_consumers_came_and_went() -> None:
    policy = Unserved(wait=5)
    assert policy.checked("a", 0) is True
    assert policy.checked("a", 0) is False
    assert policy.checked("b", 0) is True  # each atask its own
    assert policy.checked("a", 2) is False  # a server came
    assert policy.checked("a", 0) is True  # and went
    assert policy.checked("a", 0) is False


def test_an_atask_warned_about_is_checked_until_a_server_consumes_it() -> None:
    policy = Unserved(wait=5)
    policy.checked("a", 0)
    assert policy.due(100.0, {}) == ["a"]  # no call waits: still watched for a server
    policy.checked("a", 1)
    assert policy.due(101.0, {}) == []


def test_the_default_wait_is_a_few_seconds() -> None:
    assert Unserved().wait == unserved.WAIT == 5.0
    assert unserved.CHECK_TIMEOUT > 0


# The watchdog on a broker.


def warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno == logging.WARNING and "no server is consuming" in record.getMessage()
    ]


def watchdog_of(name: str) -> Watchdog:
    transport = namespace(name).transport
    assert isinstance(transport, AMQPTransport)
    return transport._caller.watchdog


@pytest.fixture
async def queues_left(amqp_url: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[None]:
    """The namespace's request queues, declared by a server that then stopped; deleted after
    the test. The watchdog waits ``WAIT`` seconds."""
    monkeypatch.setattr(unserved, "WAIT", WAIT)
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    await atasks.close(NS)
    yield
    await atasks.close(NS)
    await delete_queues(amqp_url, sys.modules[__name__], NS)


async def test_a_call_no_server_consumes_is_said_once_then_served_when_one_starts(
    amqp_url: str, queues_left: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atasks.amqp")
    router = await atasks.setup("amqp", url=amqp_url, serve=False, namespace=NS)
    watchdog = watchdog_of(NS)
    call = asyncio.ensure_future(lonely(1))
    calls = [asyncio.ensure_future(lonely(n)) for n in range(2, 5)]  # one atask: one warning
    await until(lambda: bool(warnings(caplog)), within=30)
    checked = watchdog.rounds
    await until(lambda: watchdog.rounds >= checked + 2, within=30)  # checked again: no word
    (warning,) = warnings(caplog)
    text = warning.getMessage()
    assert repr(lonely.name) in text
    assert repr(f"atasks.{NS}.{lonely.name}") in text
    assert f"namespace {NS!r}" in text
    assert "atasks run --mode server" in text
    assert not call.done()  # it waits on, for a server

    await router.activate(namespace(NS).transport)
    async with asyncio.timeout(30):
        assert await call == 2
        assert await asyncio.gather(*calls) == [3, 4, 5]
    assert len(warnings(caplog)) == 1


async def test_calls_a_server_consumes_are_not_warned_about(
    amqp_url: str, queues_left: None, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="atasks.amqp")
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    watchdog = watchdog_of(NS)
    assert await lonely(1) == 2  # answered at once: nothing to check
    assert watchdog.rounds == 0
    gate = _gates["slow"] = asyncio.Event()
    call = asyncio.ensure_future(held("slow"))
    await until(lambda: watchdog.rounds >= 1, within=30)  # checked while it waited: served
    gate.set()
    async with asyncio.timeout(30):
        assert await call == "slow"
    assert warnings(caplog) == []
