"""Fleet-wide limits and locks on the semantics every transport shares: the loopback transport's
in-process tokens, and (where a test takes ``transport_kind``) RabbitMQ's."""

from __future__ import annotations

import asyncio
import datetime
import time

import pytest
from servers import until

import atasks
from atasks.rates import Rate
from atasks.transport.backends.amqp.delays import LEVELS, routing_key, whole_seconds
from atasks.transport.tokens import LocalTokens, TokenCount

running = 0
peak = 0
gate: asyncio.Event | None = None


@atasks.atask(limit=2)
async def bounded(seconds: float) -> int:
    global running, peak
    running += 1
    peak = max(peak, running)
    try:
        await asyncio.sleep(seconds)
    finally:
        running -= 1
    return running


@atasks.atask(limit=1)
async def gated() -> str:
    assert gate is not None
    await gate.wait()
    return "gated"


@atasks.atask
async def free() -> str:
    return "free"


async def test_a_limit_bounds_calls_in_one_process() -> None:
    global peak
    peak = 0
    await atasks.setup("loopback", serve=True)
    await asyncio.gather(*(bounded(0.01) for _ in range(10)))
    assert peak == 2


async def test_waiting_for_a_fleet_slot_holds_no_local_slot(
    request: pytest.FixtureRequest, transport_kind: str
) -> None:
    """Concurrency 2: one gated call runs, a second waits for the token, and an unlimited call
    still gets the second local slot."""
    global gate
    gate = asyncio.Event()
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    await atasks.setup(transport_kind, url=url, serve=True, concurrency=2)
    first = asyncio.ensure_future(gated())
    second = asyncio.ensure_future(gated())
    assert await asyncio.wait_for(free(), 10) == "free"
    assert not first.done()
    assert not second.done()
    gate.set()
    assert await asyncio.wait_for(asyncio.gather(first, second), 10) == ["gated", "gated"]


async def test_a_call_waiting_for_its_token_ends_at_its_deadline() -> None:
    global gate
    gate = asyncio.Event()
    await atasks.setup("loopback", serve=True)
    holding = asyncio.ensure_future(gated())
    await asyncio.sleep(0)
    async with atasks.deadline(0.2):
        with pytest.raises(TimeoutError):
            await gated()
    tokens = atasks.get_transport().tokens()
    assert isinstance(tokens, LocalTokens)
    assert tokens.count("atask.test_fleet_limits_local.gated") == TokenCount(
        "atask.test_fleet_limits_local.gated", 0, 0
    )  # held by the first call; nobody left waiting
    gate.set()
    assert await holding == "gated"
    assert await gated() == "gated"


def test_limit_takes_a_whole_number() -> None:
    for wrong in (0, -1, 1.5, True, "2", 10_001):
        with pytest.raises(TypeError, match="limit"):
            atasks.atask(limit=wrong)(free.fn)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="takes no limit"):
        atasks.atask_broadcast(limit=1)(free.fn)  # type: ignore[call-overload]


async def test_a_lock_lets_one_block_in_at_a_time() -> None:
    await atasks.setup("loopback")
    inside = 0
    most = 0

    async def locked() -> None:
        nonlocal inside, most
        async with atasks.lock("l"):
            inside += 1
            most = max(most, inside)
            await asyncio.sleep(0.01)
            inside -= 1

    await asyncio.gather(*(locked() for _ in range(5)))
    assert most == 1


async def test_a_lock_held_past_its_ttl_is_released() -> None:
    await atasks.setup("loopback")
    with pytest.raises(TimeoutError, match=r"past its ttl of 0\.05s"):
        async with atasks.lock("l", ttl=0.05):
            await asyncio.sleep(5)
    async with atasks.lock("l", wait=1) as held:
        assert held.held
    with pytest.raises(TimeoutError, match=r"not free within 0\.05s"):
        async with atasks.lock("l"), atasks.lock("l", wait=0.05):
            pass


async def test_local_tokens_count_free_and_waiting() -> None:
    tokens = LocalTokens()
    first = await tokens.take("p", 1)
    waiting = asyncio.ensure_future(tokens.take("p", 1))
    await asyncio.sleep(0)
    assert tokens.count("p") == TokenCount("p", 0, 1)
    await first.release()
    await first.release()  # idempotent
    second = await waiting
    assert tokens.count("p") == TokenCount("p", 0, 0)
    await second.release()
    assert tokens.count("p") == TokenCount("p", 1, 0)


@atasks.atask
async def now() -> float:
    return time.time()


ran: list[float] = []


@atasks.atask_queue
async def note() -> None:
    ran.append(time.time())


async def test_delayed_calls_do_not_run_before_their_time() -> None:
    await atasks.setup("loopback", serve=True)
    ran.clear()
    async with atasks.delayed(0.3) as first:
        await note()
        assert await now() >= first
    with atasks.delayed(
        until=datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=0.2)
    ) as due:
        assert await now() >= due
    await until(lambda: len(ran) == 1, within=5)
    assert ran[0] >= first
    assert await now() < due + 5  # outside a block: at once


def test_delayed_takes_seconds_or_a_datetime() -> None:
    for args, kwargs in (((), {}), ((1,), {"until": datetime.datetime.now()})):
        with pytest.raises(TypeError, match="one of them"):
            atasks.delayed(*args, **kwargs)
    with pytest.raises(ValueError, match=">= 0"):
        atasks.delayed(-1)
    with pytest.raises(TypeError, match="datetime"):
        atasks.delayed(until=5)  # type: ignore[arg-type]


def test_the_ladder_routes_each_bit_of_a_delay() -> None:
    assert whole_seconds(103.2, now=100.0) == 4  # rounded up: never early
    assert whole_seconds(99.0, now=100.0) == 0
    key = routing_key(5, "atasks.default.f")
    assert key == "0." * (LEVELS - 3) + "1.0.1.atasks.default.f"
    with pytest.raises(atasks.ConfigurationError, match="longest"):
        whole_seconds(2.0**LEVELS, now=0.0)


started: list[float] = []


@atasks.atask(rate="5/0.2s")
async def paced() -> None:
    started.append(time.time())


async def test_a_rate_bounds_starts_in_any_window() -> None:
    await atasks.setup("loopback", serve=True)
    started.clear()
    began = time.time()
    await asyncio.wait_for(asyncio.gather(*(paced() for _ in range(12))), 10)
    assert time.time() - began >= 0.4  # 5 at once, 5 after 0.2 s, 2 after 0.4 s
    starts = sorted(started)
    assert all(later - earlier >= 0.19 for earlier, later in zip(starts, starts[5:], strict=False))


def test_rates_are_parsed_where_the_atask_is_decorated() -> None:
    assert Rate.parse("100/s") == Rate(100, 1.0)
    assert Rate.parse("20/m") == Rate(20, 60.0)
    assert Rate.parse(" 3 / 10s ") == Rate(3, 10.0)
    for wrong in ("100", "0/s", "1/w", "-1/s", "1/0s", "10001/s", 5):
        with pytest.raises(TypeError, match="rate"):
            atasks.atask(rate=wrong)(free.fn)  # type: ignore[call-overload]
