"""Calls to one atask that are ready together travel together (AMQP), and each is still a call
of its own: its result, error, deadline, cancellation, progress — the same over loopback."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from pathlib import Path

import aio_pika
import pytest
import workload
from proxy import Proxy
from servers import (
    Servers,
    isolates_suspects,
    until,
    wait_for_consumers,
    wait_for_ready,
    wait_until_served,
)

import atasks
from atasks import atask
from atasks.errors import DeliveryLimitExceeded
from atasks.events import Progress
from atasks.router import Router
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.coalesce import Coalescer
from atasks.transport.backends.amqp.dead import list_dead_letters, replay_dead_letters
from atasks.transport.backends.amqp.topology import Topology

pytestmark = pytest.mark.timeout(180)

QUEUES = Topology("default")
started: set[int] = set()
stopped: set[int] = set()


@atask
async def echo_after(value: int, seconds: float) -> int:
    started.add(value)
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        stopped.add(value)
        raise
    return value


@atask
async def refuse(value: int) -> int:
    raise LookupError(f"no {value}")


@atask
async def report(steps: int) -> int:
    for step in range(1, steps + 1):
        await atasks.progress(step, steps)
    return steps


async def test_the_calls_of_a_fan_out_keep_their_own_outcomes(served: Router) -> None:
    started.clear()
    stopped.clear()

    async def timed_out() -> int:
        async with atasks.deadline(0.5):
            return await echo_after(-1, 60)

    async def observed(steps: int) -> tuple[int, list[float]]:
        seen: list[Progress] = []
        async with atasks.observe_progress(seen.append):
            result = await report(steps)
        return result, [p.done for p in seen]

    cancelled = asyncio.ensure_future(echo_after(-2, 60))
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(echo_after(i, 0.01) for i in range(40)),
            *(refuse(i) for i in range(3)),
            timed_out(),
            observed(2),
            observed(3),
            return_exceptions=True,
        ),
        60,
    )
    assert outcomes[:40] == list(range(40))
    for i, error in enumerate(outcomes[40:43]):
        assert isinstance(error, LookupError)
        assert str(error) == f"no {i}"
    assert isinstance(outcomes[43], TimeoutError)
    assert outcomes[44:] == [(2, [1.0, 2.0]), (3, [1.0, 2.0, 3.0])]
    await until(lambda: -2 in started)
    cancelled.cancel()
    await until(lambda: {-1, -2} <= stopped)  # on their server too: past its deadline, cancelled
    assert stopped == {-1, -2}


@pytest.mark.parametrize(("coalesce", "messages"), [(32, 3), (1, 70)])
async def test_a_fan_out_travels_in_few_messages(
    servers: Servers, amqp_url: str, coalesce: int, messages: int
) -> None:
    await atasks.setup("amqp", url=amqp_url, coalesce=coalesce)
    first = servers.start()
    await servers.wait_serving(0, within=60)  # every queue of the workload is declared
    await wait_until_served(workload.ready)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    calls = [asyncio.ensure_future(workload.slow_pid(0)) for _ in range(70)]
    # Nobody serves them: they wait in the queue, 32 + 32 + 6 calls to a message, or one each.
    await wait_for_ready(amqp_url, QUEUES.request_queue(workload.slow_pid.name), messages)
    second = servers.start()
    assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [second.pid] * 70


async def test_competing_servers_share_a_fan_out(servers: Servers, amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url)
    pids = {servers.start("--concurrency", "8").pid, servers.start("--concurrency", "8").pid}
    await wait_until_served(workload.ready)
    await wait_for_consumers(amqp_url, QUEUES.request_queue(workload.slow_pid.name), 2)
    # One message of 32 calls: the server it reaches starts 8, and the rest go back once they
    # waited 50 ms for a slot (each call takes 200 ms).
    ran = Counter(
        await asyncio.wait_for(asyncio.gather(*(workload.slow_pid(0.2) for _ in range(32))), 60)
    )
    assert set(ran) == pids
    assert min(ran.values()) >= 8


async def test_a_batch_delivered_again_runs_no_answered_call_again(
    servers: Servers, rabbit: RabbitNode, tmp_path: Path
) -> None:
    await atasks.setup("amqp", url=rabbit.url)
    async with Proxy(rabbit.port) as proxy:
        servers.url = proxy.url
        server = servers.start()
        await servers.wait_serving(0, within=60)  # registered: none left to declare at the cut
        await wait_until_served(workload.ready)
        tallies = [tmp_path / f"tally-{i}" for i in range(6)]
        # One message: three calls answered at once, three still running when the server's
        # connection drops; the broker delivers the message again once it is back.
        calls = [
            asyncio.ensure_future(workload.count_run(str(tally), 0 if i < 3 else 2.0))
            for i, tally in enumerate(tallies)
        ]
        await until(lambda: all(c.done() for c in calls[:3]) and all(map(Path.exists, tallies)))
        assert proxy.cut() == 1
        assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [server.pid] * 6
        assert proxy.accepted == 2
    assert [len(tally.read_text().splitlines()) for tally in tallies] == [1] * 6
    assert "kept the reply" in servers.log(0)


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_each_call_of_a_poison_batch_is_told(
    servers: Servers, amqp_url: str, queue_type: str
) -> None:
    # Each poison call runs alone once its servers died twice, and needs its own deaths from
    # then on, each worker restarted later than the last: a lower limit keeps the test short.
    await atasks.setup("amqp", url=amqp_url, queue_type=queue_type, delivery_limit=3)
    servers.start("--workers", "2", "--queue-type", queue_type, env={"ATASKS_DELIVERY_LIMIT": "3"})
    await wait_until_served(workload.ready)
    outcomes = await asyncio.wait_for(
        asyncio.gather(*(workload.kill_my_server() for _ in range(3)), return_exceptions=True),
        120,
    )
    assert [type(outcome) for outcome in outcomes] == [DeliveryLimitExceeded] * 3
    assert await workload.pid() > 0  # restarted workers still serve


async def test_an_expired_batch_is_dead_lettered_and_replayed_whole(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    await atasks.setup("amqp", url=amqp_url)
    first = servers.start()
    await servers.wait_serving(0, within=60)  # registered: SIGTERM stops it cleanly
    await wait_until_served(workload.ready)
    first.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(first.wait, 30) == 0
    earlier = {d.call_id for d in await list_dead_letters(amqp_url, "default")}
    tallies = [tmp_path / f"tally-{i}" for i in range(3)]
    with pytest.raises(TimeoutError):  # nobody serves them: they expire in the queue, together
        async with atasks.deadline(0.5):
            await asyncio.gather(*(workload.count_run(str(tally), 0) for tally in tallies))

    async def batches() -> list[str]:
        letters = await list_dead_letters(amqp_url, "default")
        return [
            d.reason for d in letters if d.call_id not in earlier and d.call_id.startswith("batch:")
        ]

    async with asyncio.timeout(30):
        while not await batches():
            await asyncio.sleep(0.05)
    assert await batches() == ["expired"]
    servers.start()
    await wait_until_served(workload.ready)
    replayed = await replay_dead_letters(amqp_url, "default", atask=workload.count_run.name)
    assert len(replayed.sent) == 1
    await until(lambda: all(map(Path.exists, tallies)))  # each call ran, without its deadline
    assert [len(tally.read_text().splitlines()) for tally in tallies] == [1] * 3


@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_a_batch_whose_servers_died_twice_runs_call_by_call_alone(
    servers: Servers, rabbit: RabbitNode, amqp_url: str, tmp_path: Path, queue_type: str
) -> None:
    """Once after its server died, a batch runs whole on the next; after a second death each
    of its calls goes alone to the suspects queue (so a call that kills its servers takes no
    other call of its batch down with it again), except on RabbitMQ 3.x quorum queues."""
    await atasks.setup("amqp", url=amqp_url, queue_type=queue_type)
    markers = [tmp_path / f"marker-{i}" for i in range(4)]

    def holder() -> int | None:
        """The one server whose pid every marker holds, if there is one."""
        found = {marker.read_text() if marker.exists() else "" for marker in markers}
        return int(next(iter(found))) if len(found) == 1 and "" not in found else None

    # All three servers up first: a server's start-up must not race the calls it is to cut.
    started = [servers.start("--queue-type", queue_type) for _ in range(3)]
    for index in range(3):
        await servers.wait_serving(index)
    await wait_until_served(workload.ready)
    calls = [
        asyncio.ensure_future(workload.mark_then_sleep(str(marker), 1.0)) for marker in markers
    ]
    dead: list[int] = []
    for _ in range(2):  # the server holding the batch dies, twice, mid-call
        async with asyncio.timeout(30):
            while (pid := holder()) is None or pid in dead:
                await asyncio.sleep(0.01)
        os.kill(pid, signal.SIGKILL)  # all four run together on each server, mid-batch
        dead.append(pid)
    (survivor,) = [process for process in started if process.pid not in dead]
    assert await asyncio.wait_for(asyncio.gather(*calls), 60) == [survivor.pid] * 4
    isolated = (
        "4 calls of a batch of 'workload.mark_then_sleep': 2 servers died holding them; "
        "they run alone from now on"
    ) in servers.log(started.index(survivor))
    assert isolated == isolates_suspects(rabbit, queue_type)  # 3.x quorum: whole again


async def test_a_malformed_batch_is_dead_lettered_and_the_server_goes_on(
    servers: Servers, amqp_url: str
) -> None:
    await atasks.setup("amqp", url=amqp_url)
    servers.start()
    await wait_until_served(workload.ready)
    batch_id = f"batch:{os.urandom(8).hex()}"
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        await channel.default_exchange.publish(
            aio_pika.Message(
                b"\x00\x00\x00\x09not a table",
                type="batch",
                correlation_id=batch_id,
                reply_to="nobody",
                content_type="application/x-python-pickle",
            ),
            routing_key=QUEUES.request_queue(workload.pid.name),
        )

    async def dead() -> list[str]:
        return [
            d.reason for d in await list_dead_letters(amqp_url, "default") if d.call_id == batch_id
        ]

    async with asyncio.timeout(30):
        while not await dead():
            await asyncio.sleep(0.05)
    assert await dead() == ["rejected"]
    assert await workload.pid() > 0


async def test_a_coalescer_sends_what_is_ready_together_within_its_bounds() -> None:
    sent: list[tuple[str, list[bytes]]] = []

    async def send(key: str, items: list[bytes]) -> None:
        sent.append((key, items))
        if b"bad" in items:
            raise LookupError("refused")

    coalescer: Coalescer[str, bytes] = Coalescer(send, count=3, size=10, measure=len)
    await coalescer.put("k", b"alone")  # a lone item goes on the next turn, by itself
    assert sent == [("k", [b"alone"])]
    sent.clear()
    items = [b"a", b"b", b"c", b"d", b"0123456789ab", b"e"]
    skipped = asyncio.ensure_future(coalescer.put("k", b"never"))
    puts = [asyncio.ensure_future(coalescer.put("k", item)) for item in items]
    other = asyncio.ensure_future(coalescer.put("j", b"x"))
    await asyncio.sleep(0)  # the puts run; the flush is due on the next turn
    skipped.cancel()
    await asyncio.gather(*puts, other)
    assert sorted(sent) == [
        ("j", [b"x"]),
        ("k", [b"0123456789ab"]),  # over the size: alone
        ("k", [b"a", b"b", b"c"]),  # at most three
        ("k", [b"d"]),
        ("k", [b"e"]),
    ]
    with pytest.raises(LookupError):
        await asyncio.gather(coalescer.put("k", b"bad"), coalescer.put("k", b"with it"))


async def test_a_send_cancelled_under_a_coalescer_is_a_lost_connection_to_its_senders() -> None:
    """aiormq cancels a publish in flight on a connection it finds dead (missed heartbeats): its
    callers see a lost connection (and publish again), not a cancelled call."""
    gate = asyncio.Event()

    async def send(key: str, items: list[bytes]) -> None:
        if key == "dead":
            raise asyncio.CancelledError  # as aiormq's publish does
        await gate.wait()

    coalescer: Coalescer[str, bytes] = Coalescer(send, count=8, size=100, measure=len)
    with pytest.raises(ConnectionError, match="lost while publishing"):
        await asyncio.gather(coalescer.put("dead", b"a"), coalescer.put("dead", b"b"))
    waiting = asyncio.ensure_future(coalescer.put("live", b"c"))
    await until(lambda: bool(coalescer._sending))  # its delivery waits at the gate
    (delivery,) = coalescer._sending
    delivery.cancel()  # the delivery itself cancelled: its senders are cancelled
    with pytest.raises(asyncio.CancelledError):
        await waiting
