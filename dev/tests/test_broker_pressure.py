"""Broker pressure: under a memory or disk alarm RabbitMQ blocks publishers. Callers wait within
their deadlines, the transport says why once (a WARNING naming the alarm, an INFO when it
clears), nothing is lost, and work resumes when the alarm clears."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable

import pytest

import atasks
from atasks import atask
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.pressure import Pressure

SIGNAL_WAIT = 60.0  # rabbitmqctl alone takes seconds on a busy machine
pytestmark = pytest.mark.timeout(180)  # four rabbitmqctl runs, and the node's start

# (alarm on, alarm off as the node is configured (dev/rabbitnode.py), the broker's reason)
ALARMS = {
    "memory": (
        ("set_vm_memory_high_watermark", "0.0001"),
        ("set_vm_memory_high_watermark", "0.8"),
        "low on memory",
    ),
    "disk": (
        ("set_disk_free_limit", "1000000GB"),
        ("set_disk_free_limit", "1MB"),
        "low on disk",
    ),
}


@atask(namespace="pressure")
async def triple(x: int) -> int:
    return 3 * x


async def said(caplog: pytest.LogCaptureFixture, level: int, words: str) -> list[logging.LogRecord]:
    """Waits (bounded) until ``atasks.amqp`` has logged a line with ``words`` at ``level``."""

    def found() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "atasks.amqp" and r.levelno == level and words in r.getMessage()
        ]

    async with asyncio.timeout(SIGNAL_WAIT):
        while not found():
            await asyncio.sleep(0.05)
    return found()


@pytest.fixture
async def alarm(rabbit: RabbitNode) -> AsyncIterator[Callable[[str, bool], None]]:
    """``alarm(kind, on)`` raises or clears a resource alarm on the node; every alarm is cleared
    at the end, whatever happened, so the other tests find a node that takes messages."""
    raised: set[str] = set()

    def switch(kind: str, on: bool) -> None:
        raise_it, clear_it, _ = ALARMS[kind]
        rabbit.ctl(*(raise_it if on else clear_it))
        (raised.add if on else raised.discard)(kind)

    yield switch
    for kind in raised:
        await asyncio.to_thread(rabbit.ctl, *ALARMS[kind][1])


@pytest.mark.parametrize("kind", sorted(ALARMS))
async def test_calls_wait_out_an_alarm_and_a_short_deadline_fails_in_time(
    kind: str,
    amqp_url: str,
    alarm: Callable[[str, bool], None],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "atasks.amqp")
    await atasks.setup("amqp", url=amqp_url, namespace="pressure", serve=True)
    assert await triple(1) == 3
    reason = ALARMS[kind][2]

    await asyncio.to_thread(alarm, kind, True)
    waiting = [asyncio.ensure_future(triple(n)) for n in range(10)]
    warned = await said(caplog, logging.WARNING, "blocks publishing")
    assert reason in warned[0].getMessage()
    assert "127.0.0.1" in warned[0].getMessage()
    assert "guest:guest" not in caplog.text
    assert not any(call.done() for call in waiting)

    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError) as late:
        async with atasks.deadline(1):
            await triple(100)
    took = asyncio.get_running_loop().time() - started
    assert took < 5, took
    # What was left of the 1 s when the call was sent: 1, or a hair less on a loaded machine.
    left = re.search(r"did not finish before its deadline \(([0-9.]+)s\)", str(late.value))
    assert left is not None, str(late.value)
    assert 0.9 < float(left.group(1)) <= 1
    assert f"the broker blocks publishing: {reason}" in str(late.value)

    await asyncio.to_thread(alarm, kind, False)
    cleared = await said(caplog, logging.INFO, "takes messages again")
    assert reason in cleared[0].getMessage()
    async with asyncio.timeout(SIGNAL_WAIT):
        assert await asyncio.gather(*waiting) == [3 * n for n in range(10)]
    assert await triple(7) == 21

    # Said once each way, in our words: aiormq's own lines are dropped, and the cancellation
    # the late call could not send is no warning. (The caller's side only: once the alarm
    # clears, the late call's request and then its cancellation reach the broker, and the
    # request can reach the server, in this same process, first; the server then refuses it as
    # expired, on its own logger. Which of the two arrives first is the broker's race.)
    warnings = [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith(("atasks.amqp", "aiormq"))
    ]
    assert [r.getMessage() for r in warnings] == [warned[0].getMessage()]


def test_pressure_says_it_once_each_way(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "atasks.amqp")
    pressure = Pressure(lambda: "amqp://app:***@127.0.0.1:5672/")
    pressure.unblocked()  # never blocked: nothing to say
    pressure.blocked("low on memory")
    pressure.blocked("low on memory")
    assert pressure.reason == "low on memory"
    pressure.unblocked()
    pressure.unblocked()
    assert pressure.reason is None
    pressure.blocked("low on disk")
    pressure.lost()  # a new connection starts unblocked
    assert pressure.reason is None
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0][0] == "WARNING"
    assert "low on memory (a resource alarm)" in lines[0][1]
    assert lines[1][0] == "INFO"
    assert "low on memory cleared after" in lines[1][1]
    assert lines[2][0] == "WARNING"
    assert "low on disk" in lines[2][1]


def test_pressure_hears_the_frames_through_aiormq() -> None:
    """The hook relies on aiormq's private handler names: this fails when they change."""
    import aiormq

    from atasks.transport.backends.amqp.pressure import _AIORMQ_BLOCKED, _AIORMQ_UNBLOCKED

    for name in (_AIORMQ_BLOCKED, _AIORMQ_UNBLOCKED):
        assert callable(getattr(aiormq.Connection, name, None)), name
