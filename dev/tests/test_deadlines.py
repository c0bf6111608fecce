"""Deadlines and cancellation, over loopback and a real RabbitMQ (servers in this process, so
the test can watch what the atasks see)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from servers import until, wait_for_ready

import atasks
from atasks import atask
from atasks.router import Router
from atasks.transport.backends.amqp.topology import Topology

seen: list[str] = []


@pytest.fixture(autouse=True)
def clear_seen() -> None:
    seen.clear()


async def wait_seen(*entries: str, within: float = 10.0) -> None:
    """Wait until every entry has been recorded by an atask."""
    async with asyncio.timeout(within):
        while not set(entries) <= set(seen):
            await asyncio.sleep(0.005)


@atask
async def sleeper(label: str, seconds: float) -> str:
    seen.append(f"{label} started")
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        seen.append(f"{label} cancelled")
        raise
    finally:
        seen.append(f"{label} finally")
    return label


@atask
async def level(depth: int, seconds: float) -> str:
    """A chain: level(2) awaits level(1) awaits level(0), which sleeps."""
    if depth == 0:
        return await sleeper("level0", seconds)
    seen.append(f"level{depth} started")
    try:
        return await level(depth - 1, seconds)
    except asyncio.CancelledError:
        seen.append(f"level{depth} cancelled")
        raise


@atask
async def tree(depth: int) -> None:
    """Three levels, two children each, all sleeping at the bottom."""
    if depth == 0:
        await sleeper(f"leaf{id(asyncio.current_task())}", 30)
        return
    try:
        await asyncio.gather(tree(depth - 1), tree(depth - 1))
    except asyncio.CancelledError:
        seen.append(f"tree{depth} cancelled")
        raise


@atask(timeout=0.3)
async def limited() -> None:
    await sleeper("limited", 30)


@atask
async def deadline_seen_by_server() -> float | None:
    return atasks.current_deadline()


@atask
async def nested_deadline() -> float | None:
    return await deadline_seen_by_server()


async def test_atask_timeout_option(served: Router) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError, match="deadline"):
        await limited()
    assert time.monotonic() - start < 2
    await wait_seen("limited cancelled", "limited finally")


async def test_deadline_travels_absolute_into_nested_calls(served: Router) -> None:
    async with atasks.deadline(30):
        mine = atasks.current_deadline()
        assert mine is not None
        assert await deadline_seen_by_server() == pytest.approx(mine, abs=1e-3)
        assert await nested_deadline() == pytest.approx(mine, abs=1e-3)
        async with atasks.deadline(60):  # a looser inner deadline does not extend it
            assert atasks.current_deadline() == mine
    assert await deadline_seen_by_server() is None


async def test_deadline_expiring_inside_a_three_level_chain(served: Router) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with atasks.deadline(0.5):
            await level(2, 30)
    assert time.monotonic() - start < 2
    await wait_seen("level2 cancelled", "level1 cancelled", "level0 cancelled", "level0 finally")


async def test_cancelling_the_caller_cancels_the_remote_tree(served: Router) -> None:
    call = asyncio.ensure_future(tree(2))
    async with asyncio.timeout(5):
        while sum(entry.endswith("started") for entry in seen) < 4:
            await asyncio.sleep(0.01)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await wait_seen("tree2 cancelled", "tree1 cancelled")
    async with asyncio.timeout(1):
        while sum(entry.endswith("finally") for entry in seen) < 4:
            await asyncio.sleep(0.01)
    assert sum(entry.endswith("cancelled") for entry in seen) == 4 + 2 + 1


async def test_wait_for_and_task_group_failure_cancel_remote_calls(served: Router) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(sleeper("wait_for", 30), 0.3)
    await wait_seen("wait_for cancelled")

    async def fails_soon() -> None:
        await wait_seen("sibling started")
        raise RuntimeError("boom")

    with pytest.raises(ExceptionGroup):
        async with asyncio.TaskGroup() as group:
            group.create_task(sleeper("sibling", 30))
            group.create_task(fails_soon())
    await wait_seen("sibling cancelled", "sibling finally")


@atask
async def occupy(seconds: float) -> None:
    await asyncio.sleep(seconds)


gates: dict[str, asyncio.Event] = {}


@atask
async def held(label: str) -> None:
    """Holds its slot until the test opens its gate."""
    seen.append(f"{label} started")
    await gates[label].wait()


async def hold_the_only_slot(label: str) -> asyncio.Future[None]:
    gates[label] = asyncio.Event()
    holder = asyncio.ensure_future(held(label))
    await wait_seen(f"{label} started")
    return holder


async def release(label: str, holder: asyncio.Future[None]) -> None:
    """Open the gate; then run one more request of ``sleeper`` through the one slot, behind any
    request queued before it: once it is done, those were either run or dropped."""
    gates.pop(label).set()
    await holder
    await sleeper(f"{label} after", 0)


async def test_a_request_still_queued_when_its_deadline_passes_never_runs(
    served_serially: Router,
) -> None:
    label = f"queued-{uuid.uuid4()}"  # requests of earlier tests may linger in durable queues
    holder = await hold_the_only_slot(f"{label} holder")
    with pytest.raises(TimeoutError):
        async with atasks.deadline(0.2):
            await sleeper(label, 0)
    await release(f"{label} holder", holder)
    assert f"{label} started" not in seen


async def test_a_cancelled_queued_request_never_runs(
    served_serially: Router, transport_kind: str, request: pytest.FixtureRequest
) -> None:
    label = f"queued-{uuid.uuid4()}"
    holder = await hold_the_only_slot(f"{label} holder")
    queued = asyncio.ensure_future(sleeper(label, 0))
    if transport_kind == "amqp":  # cancelled once it waits in the broker
        queue = Topology("default").request_queue(sleeper.name)
        await wait_for_ready(request.getfixturevalue("amqp_url"), queue, 1)
    else:  # cancelled once it waits for the slot
        await until(lambda: served_serially.statistics().waiting == 1)
    queued.cancel()
    await release(f"{label} holder", holder)
    assert f"{label} started" not in seen


@pytest.mark.parametrize("depth", [0, 20])  # served inline, and past the inline depth
async def test_a_stopping_loopback_server_fails_calls_in_progress_clearly(depth: int) -> None:
    await atasks.setup("loopback")
    call = asyncio.ensure_future(level(depth, 30))
    await wait_seen("level0 started")
    await atasks.close(grace=0.1)
    with pytest.raises(atasks.TransportError, match="server stopped"):
        await call
    assert "level0 cancelled" in seen


@atask
async def fails_fast() -> None:
    raise ValueError("first child fails")


@atask
async def parent_leaves_a_child_behind() -> None:
    """gather() raises on the first failure and leaves the slow sibling running."""
    await asyncio.gather(fails_fast(), occupy(0.3))


async def test_a_child_that_outlives_its_parent_leaks_no_slot(served_serially: Router) -> None:
    for _ in range(2):
        with pytest.raises(ValueError, match="first child"):
            await parent_leaves_a_child_behind()
    # The one slot is free: a leaked slot would keep this waiting. Over a broker it runs after
    # the orphaned children, queued before it for the same atask.
    await asyncio.wait_for(occupy(0), 10)
    statistics = served_serially.statistics
    await until(lambda: (statistics().running, statistics().parked) == (0, 0), within=10)


@atask
async def awaits_a_cancelled_future() -> None:
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    future.cancel()
    await future


async def test_a_cancelled_error_raised_by_the_atask_is_a_failure(served: Router) -> None:
    with pytest.raises(RuntimeError, match="raised CancelledError"):
        await asyncio.wait_for(awaits_a_cancelled_future(), 10)
