"""``@atasks.handler``: classes whose methods are atasks, one instance per server process;
``self`` never travels. In this process over loopback and a real RabbitMQ, then served by an
``atasks run`` process."""

from __future__ import annotations

import asyncio
import inspect
import os
from pathlib import Path

import handler_workload
import pytest
from handler_workload import Counter, Mailer
from servers import Servers, wait_until_served

import atasks
from atasks.handlers import handler_of
from atasks.router import Router

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(autouse=True)
def fresh_instances() -> None:
    for cls in (Mailer, Counter):
        found = handler_of(cls)
        assert found is not None
        found.forget()
    handler_workload.made.clear()


def test_a_method_atask_is_named_for_its_class_and_takes_no_self() -> None:
    assert Mailer.send.name == "handler_workload.Mailer.send"
    assert list(inspect.signature(Mailer.send).parameters) == ["to", "subject"]
    assert vars(Mailer)["send"] is Mailer.send
    assert inspect.iscoroutinefunction(Mailer.send)
    assert inspect.isasyncgenfunction(Mailer.countdown)


async def test_calls_run_on_one_instance_made_by_the_factory(served: Router) -> None:
    assert await Mailer.send("ann") == f"hi to ann via mx-{os.getpid()}"
    # Called through an instance made here: its self is not the one that runs the call.
    mine = Mailer(handler_workload.Outbox("here"))
    assert await mine.send("bob", subject="yo") == f"yo to bob via mx-{os.getpid()}"
    assert mine.outbox.sent == []
    together = await asyncio.gather(*(Mailer.sent() for _ in range(8)))  # pool threads at once
    assert together == [["ann", "bob"]] * 8
    host = f"mx-{os.getpid()}"
    assert [item async for item in Mailer.countdown(2)] == [f"{host}:2", f"{host}:1"]
    assert len(handler_workload.made) == 1


async def test_a_handler_without_factory_uses_its_constructor(served: Router) -> None:
    assert [await Counter.bump(), await Counter().bump()] == [1, 2]


def test_a_method_of_a_class_that_is_no_handler_fails_with_the_fix() -> None:
    class Plain:
        @atasks.atask(namespace="handlers-plain")
        async def greet(self, name: str) -> str:
            return name

    with pytest.raises(TypeError, match=r"not an atasks handler: decorate the class with"):
        Plain.greet  # noqa: B018
    with pytest.raises(TypeError, match="not an atasks handler"):
        Plain().greet  # noqa: B018


async def test_a_server_refuses_a_method_whose_class_is_no_handler() -> None:
    class Plain:
        @atasks.atask(namespace="handlers-served")
        async def greet(self, name: str) -> str:
            return name

    await atasks.setup("loopback", namespace="handlers-served", serve=True)
    with pytest.raises(TypeError, match="not an atasks handler"):
        await vars(Plain)["greet"]("ann")  # past the caller's check, as a stale client would


def test_handler_checks_where_it_decorates() -> None:
    with pytest.raises(TypeError, match=r"needs some; give a factory"):

        @atasks.handler
        class NeedsArguments:
            def __init__(self, url: str) -> None: ...

            @atasks.atask(namespace="handlers-checks")
            async def one(self) -> None: ...

    with pytest.raises(TypeError, match="no @atask method"):

        @atasks.handler
        class Empty:
            async def one(self) -> None: ...

    with pytest.raises(TypeError, match="decorates a class"):
        atasks.handler(len)  # type: ignore[type-var]

    with pytest.raises((TypeError, RuntimeError)) as raised:  # 3.11 wraps it in RuntimeError

        class NoSelf:
            @atasks.atask(namespace="handlers-checks")
            async def one() -> None: ...  # type: ignore[misc]

    assert "takes no self" in str(raised.value) + str(raised.value.__cause__)


async def test_a_factory_that_makes_something_else_fails_the_call() -> None:
    @atasks.handler(factory=lambda: "not a greeter")
    class Greeter:
        @atasks.atask(namespace="handlers-factory")
        async def greet(self) -> str:
            return "hello"

    await atasks.setup("loopback", namespace="handlers-factory", serve=True)
    with pytest.raises(TypeError, match="returned 'not a greeter', not a"):
        await Greeter.greet()


@pytest.fixture
async def client(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url)


async def test_a_server_process_serves_a_handler(
    servers: Servers, client: None, amqp_url: str, tmp_path: Path
) -> None:
    server = servers.start(workload="dev/tests/handler_workload.py")
    await servers.wait_serving(0)
    try:
        pid, instance = await wait_until_served(Mailer.whoami)  # type: ignore[misc]
        assert pid == server.pid
        assert await Mailer.send("ann") == f"hi to ann via mx-{server.pid}"
        assert await Mailer.whoami() == (pid, instance)  # the same instance
        assert await Mailer.sent() == ["ann"]
        assert [x async for x in Mailer.countdown(2)] == [f"mx-{pid}:2", f"mx-{pid}:1"]
        assert handler_workload.made == []  # none made by the caller
    finally:
        await _delete_queues(amqp_url)


async def _delete_queues(url: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for cls in (Mailer, Counter):
            for value in vars(cls).values():
                if isinstance(value, atasks.ATask):
                    await channel.queue_delete(f"atasks.default.{value.name}")
