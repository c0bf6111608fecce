"""A call that kills every server that runs it takes no other call down with it for good."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aio_pika
import pytest
import workload
from servers import (
    Servers,
    isolates_suspects,
    wait_for_consumers,
    wait_for_ready,
    wait_until_served,
)

import atasks
from atasks import atask
from atasks.errors import DeliveryLimitExceeded
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import wire
from atasks.transport.backends.amqp.dead import list_dead_letters
from atasks.transport.backends.amqp.topology import Topology


@pytest.mark.timeout(240)
@pytest.mark.parametrize("coalesce", [1, 32])
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_calls_beside_a_poison_call_survive_its_every_crash(
    servers: Servers, rabbit: RabbitNode, amqp_url: str, queue_type: str, coalesce: int
) -> None:
    """One server at a time, restarted whenever the poison kills it (as systemd would): the
    calls held beside the poison die with it at first, and must not die with it every time."""
    await atasks.setup("amqp", url=amqp_url, queue_type=queue_type, coalesce=coalesce)
    process = servers.start("--queue-type", queue_type)
    await wait_until_served(workload.ready)
    calls = asyncio.gather(
        workload.kill_my_server_after(0.3),
        *(workload.slow_pid(1.0) for _ in range(6)),
        return_exceptions=True,
    )
    async with asyncio.timeout(200):
        while True:
            died = asyncio.ensure_future(asyncio.to_thread(process.wait))
            await asyncio.wait({calls, died}, return_when=asyncio.FIRST_COMPLETED)
            if calls.done():
                break
            process = servers.start("--queue-type", queue_type)
    outcomes = calls.result()
    assert isinstance(outcomes[0], DeliveryLimitExceeded)
    if isolates_suspects(rabbit, queue_type):  # not 3.x quorum queues: the poison alone here
        assert [type(outcome) for outcome in outcomes[1:]] == [int] * 6, outcomes


NS = "suspects"


@atask(namespace=NS)
async def here() -> str:
    return "here"


async def _publish_suspect(url: str, call_id: str, headers: dict[str, object]) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"not run here",
                correlation_id=call_id,
                reply_to="nobody",
                headers=headers,  # type: ignore[arg-type]
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            ),
            routing_key=Topology(NS).suspects_queue,
        )


@pytest.fixture
async def suspects_server(amqp_url: str) -> AsyncIterator[Topology]:
    """This process serves ``here`` of namespace ``suspects``, and so its suspects queue."""
    topology = Topology(NS)
    await atasks.setup("amqp", url=amqp_url, namespace=NS, serve=True)
    await wait_for_consumers(amqp_url, topology.suspects_queue, 1)
    yield topology
    await atasks.close(NS)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        for queue in (
            topology.suspects_queue,
            topology.request_queue("there"),
            topology.request_queue(here.name),
        ):
            await channel.queue_delete(queue)


async def test_a_suspect_of_an_atask_its_server_does_not_serve_goes_back_to_its_queue(
    amqp_url: str, suspects_server: Topology
) -> None:
    """After waiting (5 s) for the atask to register, as servers register theirs one by one."""
    there = suspects_server.request_queue("there")
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.declare_queue(
            there, durable=True, arguments=suspects_server.request_queue_arguments()
        )
    await _publish_suspect(amqp_url, "c-there", {wire.H_SUSPECT_OF: "there", wire.H_DELIVERIES: 2})
    await wait_for_ready(amqp_url, there, 1)
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(there, passive=True)
        back = await queue.get(timeout=10)
        await back.ack()
    assert back.correlation_id == "c-there"
    assert back.headers[wire.H_UNISOLATED] == 1  # runs where it is, no more moves
    assert back.headers[wire.H_DELIVERIES] == 2  # its deaths still count
    assert back.body == b"not run here"
    assert await here() == "here"  # the server goes on


async def test_a_suspect_that_does_not_name_its_atask_is_dead_lettered(
    amqp_url: str, suspects_server: Topology
) -> None:
    await _publish_suspect(amqp_url, "c-nameless", {wire.H_DELIVERIES: 2})

    async def dead() -> list[str]:
        return [d.call_id for d in await list_dead_letters(amqp_url, NS) if d.reason == "rejected"]

    async with asyncio.timeout(30):
        while "c-nameless" not in await dead():
            await asyncio.sleep(0.05)
    assert await here() == "here"
