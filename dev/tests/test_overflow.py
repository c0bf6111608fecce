"""The calls of a batch that find no slot free wait for one, briefly, then go back to the queue
together (``amqp/server/overflow.py``), and the slots' reservations under them; pure, no
broker (test_capacity.py and test_coalescing.py show the same on real servers)."""

from __future__ import annotations

import asyncio

import pytest

from atasks.slots import Slots
from atasks.transport.backends.amqp.server.overflow import Overflow
from atasks.transport.backends.amqp.server.policies import Outcome, settle_batch
from atasks.transport.messages import Request

WAIT = 5.0  # bounds every wait below; the overflow's own wait is set per test


async def _never_back(requests: list[Request]) -> None:
    raise AssertionError("nothing should go back")


def _request(call_id: str) -> Request:
    return Request(name="x", call_id=call_id, content_type="t", body=b"")


async def test_a_reservation_waits_its_turn_and_takes_the_slot_as_try_take_would() -> None:
    slots = Slots(1)
    assert slots.try_take()
    first, second = slots.reserve(), slots.reserve()
    assert slots.free == 0
    assert slots.waiting == 2
    slots.give_back_untaken()  # the slot goes to the first in line
    assert await asyncio.wait_for(first, WAIT) is True
    assert not second.done()
    assert slots.running == 1
    slots.unreserve(second)  # stops waiting: told so, and out of the line
    assert second.result() is False
    assert slots.waiting == 0
    slots.unreserve(first)  # granted, and no request went on with it: given back
    assert slots.running == 0
    assert slots.free == 1


async def test_calls_that_get_a_slot_in_time_go_on_and_the_rest_go_back_together() -> None:
    slots = Slots(2)
    assert slots.try_take()
    assert slots.try_take()
    backs: list[list[str]] = []
    went_back = asyncio.Event()

    async def hand_back(requests: list[Request]) -> None:
        backs.append([request.call_id for request in requests])
        went_back.set()

    requests = [_request(f"c{i}") for i in range(3)]
    overflow = Overflow(slots, requests, hand_back, wait=0.05)
    waiting = [asyncio.create_task(overflow.slot(request)) for request in requests]
    slots.give_back_untaken()  # one slot frees before the wait is over: c0 takes it
    assert await asyncio.wait_for(waiting[0], WAIT) is True
    assert requests[0].slot_taken
    await asyncio.wait_for(went_back.wait(), WAIT)
    assert backs == [["c1", "c2"]]  # the others, together, once
    assert await asyncio.wait_for(asyncio.gather(*waiting[1:]), WAIT) == [False, False]
    assert not requests[1].slot_taken
    assert slots.waiting == 0
    overflow.close()
    assert slots.running == 2  # c0's slot is c0's until its call ends
    outcomes = {"c0": Outcome.ANSWERED, "c1": Outcome.ELSEWHERE, "c2": Outcome.ELSEWHERE}
    settled = settle_batch(outcomes)
    assert settled.hand_back == ()  # went back already: not a second time
    assert settled.ack


async def test_closing_gives_back_a_slot_granted_to_a_call_that_never_went_on() -> None:
    slots = Slots(1)
    assert slots.try_take()

    request = _request("c0")
    overflow = Overflow(slots, [request], _never_back, wait=60)
    slots.give_back_untaken()  # granted, but the call's task is cancelled before it runs
    overflow.close()
    assert slots.running == 0
    assert slots.free == 1
    assert not request.slot_taken


async def test_a_call_still_waiting_when_its_batch_ends_leaves_the_line() -> None:
    slots = Slots(1)
    assert slots.try_take()

    overflow = Overflow(slots, [_request("c0")], _never_back, wait=60)
    assert slots.waiting == 1
    overflow.close()  # say, the server stops
    assert slots.waiting == 0
    slots.give_back_untaken()
    assert slots.running == 0


async def test_a_hand_back_that_fails_reaches_the_calls_that_waited() -> None:
    slots = Slots(1)
    assert slots.try_take()

    async def hand_back(requests: list[Request]) -> None:
        raise ConnectionError("gone")

    overflow = Overflow(slots, [_request("c0")], hand_back, wait=0.01)
    with pytest.raises(ConnectionError, match="gone"):
        await asyncio.wait_for(overflow.slot(_request("c0")), WAIT)
    overflow.close()
    assert slots.waiting == 0
