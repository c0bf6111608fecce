"""Calls longer than the broker's consumer timeout complete, once, without disturbing others."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import workload
from servers import Servers, wait_until_served

import atasks
from atasks.testing.rabbitnode import RabbitNode

pytestmark = pytest.mark.timeout(240)

# The broker closes the channel of a delivery unacked for 20 s, checking every second.
ADVANCED_CONFIG = "[{rabbit, [{consumer_timeout, 20000}, {channel_tick_interval, 1000}]}].\n"


@pytest.mark.parametrize("told", [20, 3600], ids=["told-the-timeout", "told-a-wrong-timeout"])
async def test_a_call_outlives_the_consumer_timeout(
    rabbit_factory: Callable[[Path], RabbitNode], tmp_path: Path, told: int
) -> None:
    """Told the broker's timeout, a server leases long calls in time; told a wrong one, the
    first channel the timeout closes teaches it, and nothing runs twice either way."""
    node = rabbit_factory(tmp_path / "rabbit")
    (node.data / "advanced.config").write_text(ADVANCED_CONFIG)
    node.start()
    servers = Servers(node.url, tmp_path)
    try:
        server = servers.start("--consumer-timeout", str(told))
        await atasks.setup("amqp", url=node.url)
        await wait_until_served(workload.ready)
        long_tally, short_tally = tmp_path / "long", tmp_path / "short"
        long_call = asyncio.ensure_future(workload.count_run(str(long_tally), 45))
        short = [
            asyncio.ensure_future(workload.count_run(str(short_tally), 1.5 * i)) for i in range(20)
        ]
        assert await asyncio.wait_for(long_call, 120) == server.pid
        assert set(await asyncio.gather(*short)) == {server.pid}
        assert len(long_tally.read_text().splitlines()) == 1  # ran once
        assert len(short_tally.read_text().splitlines()) == 20  # each ran once
        log = servers.log(0)
        closed = log.count("the broker's consumer timeout: a call was held")
        if told == 20:
            assert "leased" in log
            assert closed == 0
        else:  # 3.10 enforces the timeout here once; 4.3 did not on a quorum queue's consumer
            assert closed <= 1
            if closed:
                assert "shorter than this server was told" in log
                assert "leased" in log
    finally:
        servers.stop_all()
