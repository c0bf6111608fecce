"""Priorities: ``@atask(priority=N)`` and ``async with atasks.priority(N)``, checked where they
are written, inherited by nested calls (over loopback, AMQP, and a server of its own), and the
order in which a busy server's waiting requests start on each queue type of each broker."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
import workload
from pamqp.commands import Basic
from servers import Servers, until, wait_until_served

import atasks
from atasks import atask
from atasks.compat import pack_request, unpack_request
from atasks.errors import ConfigurationError
from atasks.router import Router
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import AMQPTransport, wire
from atasks.transport.backends.amqp.dead import replay_dead_letters
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.base import Request

pytestmark = pytest.mark.timeout(60)

NS = "priorities"


# --- where priorities are written --------------------------------------------------------


@pytest.mark.parametrize("bad", [10, -1, 255])
def test_an_out_of_range_priority_is_an_error_where_the_atask_is_decorated(bad: int) -> None:
    with pytest.raises(ValueError, match=rf"priority={bad}\) on .*0 \(lowest\) to 9 \(highest\)"):

        @atask(name="priorities.bad", namespace="priorities-bad", priority=bad)
        async def bad_priority() -> None: ...


@pytest.mark.parametrize("bad", ["high", 2.5, True, None])
def test_a_priority_that_is_not_a_whole_number_is_a_type_error(bad: object) -> None:
    if bad is None:  # None is "no default priority", and allowed
        atask(name="priorities.none", namespace="priorities-bad", priority=None)(_nothing)
        return
    with pytest.raises(TypeError, match="a priority is a whole number from 0 to 9"):
        atask(name="priorities.bad", namespace="priorities-bad", priority=bad)(_nothing)


async def _nothing() -> None: ...


async def test_the_context_manager_checks_nests_and_restores() -> None:
    assert atasks.current_priority() is None
    with pytest.raises(ValueError, match=r"atasks.priority\(\): priority 12 is out of range"):
        async with atasks.priority(12):
            pass
    with pytest.raises(TypeError):
        async with atasks.priority("9"):  # type: ignore[arg-type]
            pass
    async with atasks.priority(3):
        assert atasks.current_priority() == 3
        async with atasks.priority(8):
            assert atasks.current_priority() == 8
            async with atasks.priority(0):  # 0 is a priority too: the lowest
                assert atasks.current_priority() == 0
            assert atasks.current_priority() == 8
        assert atasks.current_priority() == 3
        with pytest.raises(LookupError):
            async with atasks.priority(5):
                raise LookupError("inside")
        assert atasks.current_priority() == 3
    assert atasks.current_priority() is None


def test_max_priority_is_for_classic_queues_and_checked() -> None:
    assert (
        AMQPTransport(namespace=None, queue_type="classic").topology.request_queue_arguments() == {}
    )
    classic = AMQPTransport(namespace=None, queue_type="classic", max_priority=9)
    assert classic.topology.request_queue_arguments() == {"x-max-priority": 9}
    with pytest.raises(ConfigurationError, match="max_priority=5 is for classic request queues"):
        AMQPTransport(namespace=None, queue_type="quorum", max_priority=5)
    with pytest.raises(ConfigurationError, match="between 1 and 9"):
        AMQPTransport(namespace=None, queue_type="classic", max_priority=0)


@pytest.mark.parametrize("level", [None, 0, 4, 9])
def test_the_broker_orders_by_the_priority_property_and_the_header_says_whose(
    level: int | None,
) -> None:
    """Always a priority property (a queue counts a message without one as 0 or 4, by its
    type): 4 for a call without a priority; the header only for a call with one."""
    request = Request(name="x", call_id="c1", content_type="t", body=b"", priority=level)
    properties = wire.request_properties(request, "r", persistent=False)
    assert properties.priority == (4 if level is None else level)
    assert (properties.headers or {}).get(wire.H_PRIORITY) == level
    assert wire.request_from("x", properties, b"").priority == level
    assert unpack_request("x", pack_request(request)).priority == level  # 2019 transports


@pytest.mark.parametrize("nonsense", [10, -1, True, "9", b"9", 2.0])
def test_a_nonsense_priority_header_is_ignored(nonsense: object) -> None:
    properties = Basic.Properties(correlation_id="c2", headers={wire.H_PRIORITY: nonsense})
    assert wire.request_from("x", properties, b"").priority is None


# --- inherited by nested calls -----------------------------------------------------------


@atask(name="chain")
async def chain(levels: int) -> list[int | None]:
    """The priority in force here, then in each call of a chain of ``levels``."""
    inner = await chain(levels - 1) if levels > 1 else []
    return [atasks.current_priority(), *inner]


@atask(name="urgent_chain", priority=4)
async def urgent_chain(levels: int) -> list[int | None]:
    """Sent with priority 4 unless one is in force: its nested calls inherit what it runs at."""
    return [atasks.current_priority(), *await chain(levels - 1)]


@atask(name="lowered_chain")
async def lowered_chain(levels: int) -> list[int | None]:
    """Runs at what it was sent with, and sends its own calls at priority 1."""
    here = atasks.current_priority()
    async with atasks.priority(1):
        return [here, *await chain(levels - 1)]


async def test_priority_travels_with_each_call_and_nested_calls_inherit_it(
    served: Router,
) -> None:
    assert await chain(3) == [None, None, None]
    async with atasks.priority(7):
        assert await chain(3) == [7, 7, 7]
        assert await urgent_chain(3) == [7, 7, 7]  # a priority in force wins over the default
        assert await lowered_chain(3) == [7, 1, 1]
    assert await urgent_chain(3) == [4, 4, 4]  # the atask's default, inherited in turn
    async with atasks.priority(0):  # the lowest, not "none": the default does not apply
        assert await urgent_chain(2) == [0, 0]
    assert atasks.current_priority() is None  # nothing leaks back from the calls


async def test_nested_calls_on_a_server_process_inherit_the_priority(servers: Servers) -> None:
    servers.start()
    await servers.wait_serving(0)
    await atasks.setup("amqp", url=servers.url)
    await wait_until_served(workload.ready)
    async with atasks.priority(6):
        assert await workload.priority_chain(3) == [6, 6, 6]
    assert await workload.priority_chain(2) == [None, None]


# --- the order in which waiting requests start ---------------------------------------------

started: list[str] = []
release = asyncio.Event()  # a fresh one for each test (fresh_queue): an event binds to its loop


@atask(name="job", namespace=NS)
async def job(label: str) -> str:
    """Records that it started; the one labelled ``blocker`` holds its server until released."""
    started.append(label)
    if label == "blocker":
        await release.wait()
    return label


@atask(name="other", namespace=NS)
async def other() -> int | None:
    return atasks.current_priority()


QUEUE, OTHER_QUEUE = f"atasks.{NS}.job", f"atasks.{NS}.other"
WAITING = [("none", None), ("p0", 0), ("p2-a", 2), ("p2-b", 2), ("p5", 5), ("p9-a", 9), ("p9-b", 9)]
FIFO = [label for label, _ in WAITING]
BY_PRIORITY = ["p9-a", "p9-b", "p5", "none", "p2-a", "p2-b", "p0"]  # none counts as 4


@pytest.fixture
async def fresh_queue(amqp_url: str) -> AsyncIterator[None]:
    """No request queues of ``job`` and ``other`` (nor suspects queue) before or after: each
    test declares its own kind."""

    async def delete() -> None:
        connection = await aio_pika.connect(amqp_url)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(QUEUE)
            await channel.queue_delete(OTHER_QUEUE)
            await channel.queue_delete(f"atasks-suspects.{NS}")

    global release
    started.clear()
    release = asyncio.Event()
    await delete()
    yield
    release.set()
    await atasks.close(NS)
    await delete()


async def ready_requests(url: str, queue_name: str = QUEUE) -> int:
    return (await queue_counts(url, queue_name))[0]


async def queue_counts(url: str, queue_name: str) -> tuple[int, int]:
    """How many requests wait in a queue (ready, not delivered), and how many consumers it has."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        ready = queue.declaration_result.message_count
        consumers = queue.declaration_result.consumer_count
        assert ready is not None
        assert consumers is not None
        return ready, consumers


async def start_order(url: str, **transport_options: object) -> list[str]:
    """With one server at concurrency 1 busy on a blocker, queue requests of rising priority,
    each waiting in the broker (ready, not delivered: the server has no credit left), release
    the blocker, and return the order in which the waiting ones started."""
    await atasks.setup(
        "amqp", url=url, namespace=NS, serve=True, concurrency=1, **transport_options
    )
    blocker = asyncio.create_task(job("blocker"))
    await until(lambda: started == ["blocker"])
    calls = []
    for count, (label, level) in enumerate(WAITING, start=1):
        if level is None:
            calls.append(asyncio.create_task(job(label)))
        else:
            async with atasks.priority(level):  # the task copies the context, priority included
                calls.append(asyncio.create_task(job(label)))
        async with asyncio.timeout(10):
            while await ready_requests(url) < count:  # published, and waiting in its queue
                await asyncio.sleep(0.02)
    assert await ready_requests(url) == len(WAITING)  # none went to the busy server
    release.set()
    assert await blocker == "blocker"
    assert await asyncio.gather(*calls) == FIFO
    assert started[0] == "blocker"
    return started[1:]


async def test_classic_queues_with_max_priority_start_higher_priorities_first(
    amqp_url: str, fresh_queue: None
) -> None:
    assert await start_order(amqp_url, queue_type="classic", max_priority=9) == BY_PRIORITY


async def test_classic_queues_without_max_priority_are_fifo(
    amqp_url: str, fresh_queue: None
) -> None:
    """As in atasks 0.2; also the control: the same steps, only the queue argument differs."""
    assert await start_order(amqp_url, queue_type="classic") == FIFO


async def test_quorum_queues_order_priorities_on_rabbitmq_4_and_not_on_3(
    rabbit: RabbitNode, amqp_url: str, fresh_queue: None
) -> None:
    """RabbitMQ 4.3 quorum queues have 32 strict priority levels, with no argument; 4.0 to 4.2
    two (5 and over before the rest, two for one); 3.x none: first in, first out."""
    order = await start_order(amqp_url, queue_type="quorum")
    major, minor = (int(part) for part in str(rabbit.version).split(".")[:2])
    if (major, minor) >= (4, 3):
        assert order == BY_PRIORITY
    else:
        assert major == 3, f"no expectation written for RabbitMQ {rabbit.version}"
        assert order == FIFO


async def test_an_existing_queue_without_max_priority_is_a_clear_error(
    amqp_url: str, fresh_queue: None
) -> None:
    await atasks.setup("amqp", url=amqp_url, namespace=NS, serve=True, queue_type="classic")
    await atasks.close(NS)
    with pytest.raises(ConfigurationError) as raised:
        await atasks.setup(
            "amqp", url=amqp_url, namespace=NS, serve=True, queue_type="classic", max_priority=9
        )
    message = str(raised.value)
    assert f"'{QUEUE}'" in message
    assert "x-max-priority" in message
    assert f"delete_queue {QUEUE}" in message
    assert "max_priority" in message


async def test_a_request_handed_back_by_a_busy_server_keeps_its_priority(
    amqp_url: str, fresh_queue: None
) -> None:
    """A server busy on ``job`` still has credit on ``other``'s queue: the request for ``other``
    reaches it, finds no slot free, and goes back to its queue as a fresh copy."""
    await atasks.setup(
        "amqp",
        url=amqp_url,
        namespace=NS,
        serve=True,
        concurrency=1,
        queue_type="classic",
        max_priority=9,
    )
    blocker = asyncio.create_task(job("blocker"))
    await until(lambda: started == ["blocker"])
    async with atasks.priority(9):
        call = asyncio.create_task(other())
    async with asyncio.timeout(10):  # handed back: waiting again, its consumer paused
        while await queue_counts(amqp_url, OTHER_QUEUE) != (1, 0):
            await asyncio.sleep(0.02)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.get_queue(OTHER_QUEUE, ensure=False)
        copy = await queue.get(no_ack=False)
        assert copy is not None
        assert copy.priority == 9  # what the broker orders by
        assert (copy.headers or {}).get(wire.H_PRIORITY) == 9  # what nested calls inherit
        await copy.nack(requeue=True)
    release.set()
    assert await blocker == "blocker"
    assert await call == 9


async def test_a_replayed_dead_letter_keeps_its_priority(amqp_url: str, fresh_queue: None) -> None:
    """One dead letter with a priority, and one from before priorities (no property, no
    header): replayed, the first keeps its priority and the second gets 4, like a call without."""
    topology = Topology(NS)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await topology.declare_dead_letters(channel)
        await topology.declare_request_queue(channel, "job")
        dead = await channel.get_exchange(topology.dead_letter_exchange)
        for call_id, level in (("with", 7), ("without", None)):
            died = {wire.FIRST_DEATH_QUEUE: QUEUE, wire.FIRST_DEATH_REASON: "rejected"}
            message = aio_pika.Message(
                b"",
                correlation_id=call_id,
                reply_to="nobody",
                headers=died if level is None else {**died, wire.H_PRIORITY: level},
                priority=level,
            )
            if level is None:
                message.priority = None  # aio_pika's default is 0: publish none at all
            await dead.publish(message, routing_key="")
        try:
            replayed = await replay_dead_letters(amqp_url, NS)
            assert [letter.call_id for letter in replayed.sent] == ["with", "without"]
            queue = await channel.get_queue(QUEUE, ensure=False)
            by_id = {}
            for _ in range(2):
                request = await queue.get(no_ack=True)
                assert request is not None
                by_id[request.correlation_id] = (
                    request.priority,
                    (request.headers or {}).get(wire.H_PRIORITY),
                )
            assert by_id == {"with": (7, 7), "without": (4, None)}
        finally:
            await channel.queue_delete(topology.dead_letter_queue)
            await channel.queue_delete(topology.dead_letter_notify_queue)
