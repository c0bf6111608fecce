"""Retries with backoff: the backoff families (pure), then retries run by a server, over
loopback and a real RabbitMQ (servers in this process, so a test sees every attempt)."""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections import defaultdict

import click
import pytest
from servers import until, watch_events

import atasks
from atasks import Backoff, Retry, atask
from atasks.events import Event
from atasks.monitor import EventFormatter, format_inspect_table
from atasks.router import Router
from atasks.transport.backends.amqp.monitor import inspect_servers

pytestmark = pytest.mark.timeout(60)

# --- backoff: pure -----------------------------------------------------------------------


def delays(backoff: Backoff, count: int = 5, rand: float = 0.0) -> list[float]:
    return [backoff.delay(n, lambda: rand) for n in range(1, count + 1)]


def test_the_three_families() -> None:
    assert delays(Backoff.constant(0.5)) == [0.5] * 5
    assert delays(Backoff.linear(0.5)) == [0.5, 1.0, 1.5, 2.0, 2.5]
    assert delays(Backoff.exponential(0.5)) == [0.5, 1.0, 2.0, 4.0, 8.0]
    assert delays(Backoff.exponential(1.0, factor=3)) == [1, 3, 9, 27, 81]


def test_floor_and_ceiling_bound_every_delay() -> None:
    assert delays(Backoff.exponential(0.5, ceiling=3.0)) == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert delays(Backoff.linear(0.5, floor=1.2)) == [1.2, 1.2, 1.5, 2.0, 2.5]
    assert delays(Backoff.constant(10, floor=1, ceiling=2)) == [2.0] * 5


def test_jitter_takes_off_up_to_its_fraction_and_never_goes_below_the_floor() -> None:
    backoff = Backoff.constant(2.0, jitter=0.5)
    assert delays(backoff, rand=0.0) == [2.0] * 5  # rand() is in [0, 1)
    assert delays(backoff, rand=0.5) == [1.5] * 5
    assert delays(backoff, rand=0.999) == pytest.approx([1.001] * 5)
    full = Backoff.exponential(1.0, ceiling=4.0, jitter=1.0, floor=0.25)
    assert delays(full, rand=0.999) == [0.25] * 5
    assert delays(full, rand=0.5) == [0.5, 1.0, 2.0, 2.0, 2.0]  # jitter applies at the ceiling
    drawn = [Backoff.linear(1.0, jitter=0.3).delay(10) for _ in range(200)]
    assert all(7.0 <= d <= 10.0 for d in drawn)
    assert len(set(drawn)) > 100


def test_huge_exponents_reach_the_ceiling_or_never() -> None:
    assert Backoff.exponential(1.0, ceiling=60).delay(10_000) == 60
    assert Backoff.exponential(1.0).delay(10_000) == math.inf
    assert Backoff.exponential(1.0, jitter=1.0).delay(10_000) == math.inf
    assert Backoff.exponential(0.0).delay(10_000) == 0.0


@pytest.mark.parametrize(
    "make",
    [
        lambda: Backoff.constant(-1),
        lambda: Backoff.constant(math.inf),
        lambda: Backoff.exponential(1, factor=0.5),
        lambda: Backoff.linear(1, floor=2, ceiling=1),
        lambda: Backoff.constant(1, jitter=1.5),
        lambda: Backoff("cubic", 1),  # type: ignore[arg-type]
        lambda: Backoff.constant(1).delay(0),
    ],
)
def test_nonsense_backoff_is_a_value_error(make: object) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - each message names its argument
        make()  # type: ignore[operator]


def test_retry_says_when_and_whether() -> None:
    retry = Retry(attempts=3, backoff=Backoff.linear(1.0), on=(ConnectionError, TimeoutError))
    assert retry.delay_after(1, ConnectionResetError()) == 1.0
    assert retry.delay_after(2, TimeoutError()) == 2.0
    assert retry.delay_after(3, ConnectionError()) is None  # no attempts left
    assert retry.delay_after(1, ValueError()) is None  # not retried
    assert Retry(on=KeyError).on == (KeyError,)
    assert Retry().on == (Exception,)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"attempts": 0}, ValueError),
        ({"attempts": 2.5}, TypeError),
        ({"backoff": 1.0}, TypeError),
        ({"on": asyncio.CancelledError}, TypeError),
        ({"on": (KeyError, "x")}, TypeError),
    ],
)
def test_nonsense_retry_is_an_error(kwargs: dict[str, object], error: type[Exception]) -> None:
    with pytest.raises(error):
        Retry(**kwargs)  # type: ignore[arg-type]


def test_retry_is_an_option_of_atask_and_nothing_else_is() -> None:
    with pytest.raises(TypeError, match=r"takes an atasks\.Retry"):

        @atask(name="retries.bad", namespace="retries", retry=3)  # type: ignore[call-overload]
        async def bad() -> None: ...

    with pytest.raises(TypeError, match="unknown @atask option retries"):
        atask(retries=3)  # type: ignore[call-overload]


def test_a_retrying_event_reads_well() -> None:
    event = Event(
        kind="retrying",
        atask="m.fetch",
        call_id="abcdef0123",
        parent_id=None,
        namespace="default",
        error="builtins.ConnectionError: refused",
        attempt=2,
        delay=1.5,
    )
    assert Event.from_dict(event.as_dict()) == event
    line = click.unstyle(EventFormatter().format(event))
    assert "↻ retrying" in line
    assert "fetch [abcdef0123] attempt 2 in 1.50s" in line
    assert "ConnectionError: refused" in line
    table = format_inspect_table([{"host": "h", "pid": 1, "retried": 7}])
    assert table.splitlines()[0].split()[-2:] == ["retried", "uptime"]
    assert table.splitlines()[2].split()[-2] == "7"


# --- served: loopback and AMQP -----------------------------------------------------------

attempts: dict[str, list[float]] = defaultdict(list)  # token -> when each attempt started
failed_once: dict[str, asyncio.Event] = defaultdict(asyncio.Event)


@atask(retry=Retry(attempts=4, backoff=Backoff.constant(0.01), on=ConnectionError))
async def flaky(token: str, failures: int) -> int:
    """Fails with ConnectionError ``failures`` times, then returns its attempt number."""
    attempts[token].append(time.monotonic())
    if len(attempts[token]) <= failures:
        raise ConnectionError(f"attempt {len(attempts[token])} refused")
    return len(attempts[token])


@atask(retry=Retry(attempts=4, backoff=Backoff.constant(0.01), on=ConnectionError))
async def wrong(token: str) -> None:
    attempts[token].append(time.monotonic())
    raise ValueError("not a connection problem")


@atask(retry=Retry(attempts=5, backoff=Backoff.constant(1.2)))
async def always_failing(token: str) -> None:
    attempts[token].append(time.monotonic())
    failed_once[token].set()
    raise ConnectionError("down")


@atask(retry=Retry(attempts=2, backoff=Backoff.constant(3.0)))
async def fails_then_succeeds(token: str) -> int:
    attempts[token].append(time.monotonic())
    if len(attempts[token]) == 1:
        failed_once[token].set()
        raise ConnectionError("first attempt fails")
    return len(attempts[token])


class Never(Backoff):
    """A backoff grown past any float: ``math.inf``."""

    def delay(self, retry: int, rand: object = None) -> float:  # type: ignore[override]
        return math.inf


@atask(retry=Retry(attempts=3, backoff=Never("constant", 0)))
async def never_again(token: str) -> None:
    attempts[token].append(time.monotonic())
    raise ConnectionError("down")


@atask
async def quick(value: int) -> int:
    return value


async def test_a_failing_atask_is_retried_until_it_succeeds(served: Router) -> None:
    token = uuid.uuid4().hex
    before = served.statistics().retried
    assert await flaky(token, 2) == 3
    assert len(attempts[token]) == 3
    assert served.statistics().retried - before == 2


async def test_the_caller_gets_the_last_exception_with_the_attempt_count(
    served: Router,
) -> None:
    token = uuid.uuid4().hex
    with pytest.raises(ConnectionError, match="attempt 4 refused") as caught:
        await flaky(token, 10)
    assert caught.value.attempts == 4  # type: ignore[attr-defined]
    assert "atasks: gave up on attempt 4 of 4 (no attempts left)" in caught.value.__notes__
    assert len(attempts[token]) == 4


async def test_an_exception_not_listed_is_not_retried(served: Router) -> None:
    token = uuid.uuid4().hex
    with pytest.raises(ValueError, match="not a connection problem") as caught:
        await wrong(token)
    assert caught.value.attempts == 1  # type: ignore[attr-defined]
    assert "(ValueError is not retried)" in caught.value.__notes__[0]
    assert len(attempts[token]) == 1


async def test_a_retry_that_cannot_start_before_the_deadline_is_not_made(
    served: Router,
) -> None:
    token = uuid.uuid4().hex
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="down") as caught:  # not TimeoutError
        async with atasks.deadline(2.0):
            await always_failing(token)
    # Attempts at 0 and 1.2 s; a third at 2.4 s would start past the deadline, and is not
    # made: the caller learns at once, not at its deadline.
    assert len(attempts[token]) == 2
    assert time.monotonic() - started < 2.0
    assert caught.value.attempts == len(attempts[token])  # type: ignore[attr-defined]
    assert "would start after the deadline" in caught.value.__notes__[0]


async def test_an_infinite_backoff_makes_no_retry(served: Router) -> None:
    token = uuid.uuid4().hex
    with pytest.raises(ConnectionError) as caught:
        await never_again(token)
    assert "(the next attempt would never start)" in caught.value.__notes__[0]
    assert len(attempts[token]) == 1


async def test_cancelling_the_caller_stops_the_retries(served: Router) -> None:
    token = uuid.uuid4().hex
    before = served.statistics().cancelled
    call = asyncio.ensure_future(always_failing(token))
    await asyncio.wait_for(failed_once[token].wait(), 10)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    await until(lambda: served.statistics().cancelled == before + 1, within=10)
    assert len(attempts[token]) == 1  # the retry waiting for its delay was cancelled


async def test_a_retry_waiting_for_its_delay_holds_no_slot(served_serially: Router) -> None:
    token = uuid.uuid4().hex
    retrying = asyncio.ensure_future(fails_then_succeeds(token))
    await asyncio.wait_for(failed_once[token].wait(), 10)
    # At concurrency 1, another call runs while the first waits 3 s for its retry.
    assert await asyncio.wait_for(quick(7), 2.5) == 7
    assert len(attempts[token]) == 1
    assert served_serially.statistics().running == 0
    assert await asyncio.wait_for(retrying, 10) == 2


async def test_retries_are_events_and_counted_in_inspect(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True, events=True)
    events: list[Event] = []
    watcher = await watch_events(amqp_url, events)
    token = uuid.uuid4().hex
    try:
        assert await flaky(token, 2) == 3
        await until(lambda: any(e.kind == "succeeded" and e.atask == flaky.name for e in events))
    finally:
        watcher.cancel()
    mine = [e for e in events if e.atask == flaky.name]
    assert [e.kind for e in mine] == [
        "received",
        "started",
        "retrying",
        "started",
        "retrying",
        "started",
        "succeeded",
    ]
    retrying = [e for e in mine if e.kind == "retrying"]
    assert [e.attempt for e in retrying] == [2, 3]
    assert [e.delay for e in retrying] == [0.01, 0.01]
    assert retrying[0].error == "builtins.ConnectionError: attempt 1 refused"
    servers = await inspect_servers(amqp_url, "default", wait=0.5)
    assert [s["retried"] for s in servers if s["pid"] == os.getpid()] == [2]
