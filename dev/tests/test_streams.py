"""Remote async generators: order, backpressure, closing, errors, deadlines, lost callers and
lost servers — over loopback and both brokers."""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import workload
from servers import REPO, Servers, until, wait_until_served

import atasks
from atasks import StreamInterrupted, TransportError, atask
from atasks.router import Router
from atasks.streams import Received
from atasks.transport.backends.amqp import streams as amqp_streams
from atasks.transport.base import Item

pytestmark = pytest.mark.timeout(120)


def _token() -> str:
    return uuid.uuid4().hex


async def test_items_arrive_in_order(served: Router) -> None:
    count = 100_000
    expected = 0
    async for item in workload.many(count):
        assert item == expected
        expected += 1
    assert expected == count


async def test_break_closes_the_generator_within_the_window(served: Router) -> None:
    token = _token()
    async for item in workload.numbers(token, None):
        if item == 2:
            broke = time.monotonic()
            break
    made = workload.streamed[token]
    await until(lambda: "closed" in made, within=5, every=0.001)
    closed_after = time.monotonic() - broke
    assert made[-1] == "closed"
    assert len(made) - 1 <= 3 + workload.numbers.window  # no item beyond the window
    assert closed_after < 1.0, closed_after  # milliseconds, on an idle machine


async def test_aclose_and_cancellation_close_the_generator(served: Router) -> None:
    token = _token()
    stream = workload.numbers(token, None)
    assert await anext(stream) == 0
    await stream.aclose()
    await until(lambda: "closed" in workload.streamed[token], within=5, every=0.001)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)

    token = _token()
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in workload.numbers(token, None, pause=0.01):
            first.set()

    task = asyncio.ensure_future(consume())
    async with asyncio.timeout(10):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until(lambda: "closed" in workload.streamed[token], within=5, every=0.001)


async def test_an_exception_mid_stream_is_raised_after_the_items_before_it(
    served: Router,
) -> None:
    token = _token()
    got: list[int] = []
    with pytest.raises(ValueError, match="no item 3 today") as raised:
        async for item in workload.numbers(token, 10, fail_at=3):
            got.append(item)
    assert got == [0, 1, 2]
    notes = "\n".join(raised.value.__notes__)
    assert "Remote traceback" in notes
    assert "in numbers" in notes
    assert "after 3 items" in notes
    assert workload.streamed[token][-1] == "closed"


async def test_a_deadline_mid_stream_stops_it_on_both_sides(served: Router) -> None:
    token = _token()
    got: list[int] = []
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        async with atasks.deadline(0.5):
            async for item in workload.numbers(token, None, pause=0.02):
                got.append(item)
    assert 0.5 <= time.monotonic() - start < 3
    assert got
    assert got == list(range(len(got)))
    await until(lambda: "closed" in workload.streamed[token], within=5, every=0.001)


async def test_progress_and_items_share_the_way_back(served: Router) -> None:
    @atask(name="streams.reporting", window=2)
    async def reporting(count: int) -> AsyncIterator[str]:
        for item in range(count):
            await atasks.progress(item + 1, count)
            yield f"item {item}"

    reports: list[float] = []
    async with atasks.observe_progress(lambda p: reports.append(p.done)):
        items = [item async for item in reporting(5)]
    assert items == [f"item {n}" for n in range(5)]
    await until(lambda: len(reports) == 5, within=5)
    assert reports == [1, 2, 3, 4, 5]


async def test_a_server_that_stops_mid_stream_interrupts_it_and_never_restarts_it(
    served: Router,
) -> None:
    token = _token()
    got: list[int] = []
    with pytest.raises(TransportError) as raised:
        async with atasks.deadline(20):
            async for item in workload.numbers(token, None, pause=0.01):
                got.append(item)
                if item == 2:
                    await served.deactivate(0)
    assert not isinstance(raised.value, TimeoutError)
    assert got == list(range(len(got)))
    assert len(got) >= 3
    made = workload.streamed[token]
    await until(lambda: "closed" in made, within=5)
    assert made.count(0) == 1  # run once


async def test_a_slow_generator_is_not_taken_for_a_lost_caller(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(amqp_streams, "IDLE", 0.5)
    monkeypatch.setattr(amqp_streams, "KEEPALIVE", 0.1)
    await atasks.setup("amqp", url=amqp_url, serve=True)
    # Each item comes after twice the idle time: only the caller's keepalives keep it going.
    items = [item async for item in workload.numbers(_token(), 3, pause=1.0)]
    assert items == [0, 1, 2]


def test_items_are_handed_out_once_each_and_a_gap_ends_the_stream() -> None:
    received = Received(8)
    for seq in (0, 1, 1, 2, 4, 5):
        received(Item(seq, str(seq).encode()))
    assert list(received.items) == [b"0", b"1"]
    assert received.lost == "item 2 was expected and item 1 came"


def test_a_stream_is_declared_as_one() -> None:
    assert inspect.isasyncgenfunction(workload.numbers)
    assert not inspect.iscoroutinefunction(workload.numbers)
    assert isinstance(workload.numbers, atasks.StreamATask)
    assert workload.numbers.window == 8
    assert atask(name="streams.default")(workload.numbers.fn).window == 64
    with pytest.raises(TypeError, match="async generator"):

        @atask(name="streams.not_one", window=4)
        async def not_one() -> int:
            return 1

    with pytest.raises(TypeError, match="cannot retry"):

        @atask(name="streams.retried", retry=atasks.Retry(attempts=2))
        async def retried() -> AsyncIterator[int]:
            yield 1

    with pytest.raises(TypeError, match="cannot stream"):

        @atasks.atask_queue(name="streams.queued")
        async def queued() -> AsyncIterator[int]:
            yield 1

    with pytest.raises(TypeError, match="whole number"):

        @atask(name="streams.no_window", window=0)
        async def no_window() -> AsyncIterator[int]:
            yield 1


def _rss(pid: int) -> int:
    """The resident set size of process ``pid``, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


async def test_a_slow_consumer_bounds_the_server(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    server = servers.start()
    await servers.wait_serving(0)
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    marker = tmp_path / "made"
    size, count, window = 256 * 1024, 120, workload.blobs.window
    before = peak = _rss(server.pid)
    consumed = 0
    async for blob in workload.blobs(str(marker), size, count):
        assert len(blob) == size
        assert blob[0] == consumed % 256
        consumed += 1
        made = len(marker.read_text().splitlines())
        assert made <= consumed + window, (made, consumed)  # never beyond the window
        peak = max(peak, _rss(server.pid))
        await asyncio.sleep(0.02)  # a slow consumer: 30 MB made at 12 MB/s at most
    assert consumed == count
    grew = peak - before
    print(f"server RSS {before / 2**20:.1f} MB, peak {peak / 2**20:.1f} MB")
    assert grew < 16 * 2**20, grew  # the window is 4 blobs of 256 KB; the stream 30 MB


CALLER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, "dev/tests")
    import atasks, workload

    async def main():
        await atasks.setup("amqp", url=sys.argv[1])
        async for item in workload.numbers(sys.argv[2], None, pause=0.01):
            print(item, flush=True)

    asyncio.run(main())
    """
)


async def test_a_killed_caller_stops_the_generator_on_its_server(
    amqp_url: str, tmp_path: Path
) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True)
    token = _token()
    script = tmp_path / "caller.py"
    script.write_text(CALLER)
    caller = subprocess.Popen(
        [sys.executable, str(script), amqp_url, token],
        cwd=REPO,
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert caller.stdout is not None
        for expected in range(3):  # the stream runs
            line = await asyncio.wait_for(asyncio.to_thread(caller.stdout.readline), 30)
            assert line == f"{expected}\n".encode()
    finally:
        os.killpg(caller.pid, signal.SIGKILL)
        caller.wait(timeout=30)
        if caller.stdout is not None:
            caller.stdout.close()
    killed = time.monotonic()
    made = workload.streamed[token]
    await until(lambda: "closed" in made, within=amqp_streams.IDLE + 10)
    took = time.monotonic() - killed
    print(f"closed {took:.1f}s after its caller was killed")
    assert took < amqp_streams.IDLE + 3
    assert len(made) - 1 <= 3 + workload.numbers.window + 3  # the items printed, the window


async def test_a_lost_server_interrupts_the_stream_which_is_not_replayed(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    servers.start()
    servers.start()
    await servers.wait_serving(0)
    await servers.wait_serving(1)
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    marker = tmp_path / "runs"
    got: list[int] = []
    with pytest.raises(StreamInterrupted, match=r"after \d+ items arrived") as raised:
        async with atasks.deadline(60):
            async for item in workload.crash_after(str(marker), 5):
                got.append(item)
    assert raised.value.received == len(got)
    assert got == list(range(len(got)))
    assert len(got) <= 5
    assert len(marker.read_text().splitlines()) == 1  # run once, never restarted


def test_iter_sync(tmp_path: Path) -> None:
    script = tmp_path / "sync_caller.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            sys.path.insert(0, "dev/tests")
            import atasks, workload

            atasks.setup_blocking("loopback", serve=True)
            print(list(atasks.iter_sync(workload.numbers("a", 20))) == list(range(20)))
            for item in atasks.iter_sync(workload.numbers("b", None)):
                if item == 2:
                    break
            print(workload.streamed["b"][-1])
            try:
                list(atasks.iter_sync(workload.numbers("c", None, pause=0.01), timeout=0.3))
            except TimeoutError:
                print("timeout")
            """
        )
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "closed", "timeout"]
