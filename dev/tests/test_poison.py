"""A call that kills every server that runs it takes no other call down with it for good."""

from __future__ import annotations

import asyncio

import pytest
import workload
from servers import Servers, wait_until_served

import atasks
from atasks.errors import DeliveryLimitExceeded


@pytest.mark.timeout(240)
@pytest.mark.parametrize("coalesce", [1, 32])
@pytest.mark.parametrize("queue_type", ["quorum", "classic"])
async def test_calls_beside_a_poison_call_survive_its_every_crash(
    servers: Servers, amqp_url: str, queue_type: str, coalesce: int
) -> None:
    """One server at a time, restarted whenever the poison kills it (as systemd would): the
    calls held beside the poison die with it at first, and must not die with it every time."""
    await atasks.setup("amqp", url=amqp_url, queue_type=queue_type, coalesce=coalesce)
    process = servers.start("--queue-type", queue_type)
    await wait_until_served(workload.ready)
    calls = asyncio.ensure_future(
        asyncio.gather(
            workload.kill_my_server_after(0.5),
            *(workload.slow_pid(2.0) for _ in range(6)),
            return_exceptions=True,
        )
    )
    try:
        async with asyncio.timeout(200):
            while True:
                died = asyncio.ensure_future(asyncio.to_thread(process.wait))
                await asyncio.wait({calls, died}, return_when=asyncio.FIRST_COMPLETED)
                if calls.done():
                    break
                process = servers.start("--queue-type", queue_type)
    finally:
        for index in range(len(servers.processes)):
            print(f"--- server {index}\n{servers.log(index)}")
    outcomes = calls.result()
    assert isinstance(outcomes[0], DeliveryLimitExceeded)
    assert [type(outcome) for outcome in outcomes[1:]] == [int] * 6, outcomes
