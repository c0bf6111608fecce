"""Process-pool atasks: a plain ``def`` run in a worker process of its server, killed when its
call is cancelled or passes its deadline. Over loopback and a real RabbitMQ, in this process,
then with an ``atasks run`` server."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
import workload
from servers import Servers, alive, until, wait_until_served

import atasks
from atasks import atask
from atasks.processes import ProcessPool
from atasks.router import Router

pytestmark = pytest.mark.timeout(90)


async def running_on(marker: Path) -> int:
    """The pid a ``workload.spin`` call writes once it runs."""
    await until(lambda: marker.exists() and marker.read_text() != "", within=30)
    return int(marker.read_text())  # noqa: ASYNC240 - a few bytes


def test_process_is_for_plain_functions_importable_by_name() -> None:
    with pytest.raises(TypeError, match="runs a plain def"):

        @atask(name="processes.coroutine", namespace="processes", mechanism="process")
        async def coroutine() -> None: ...

    with pytest.raises(TypeError, match="top level of a module"):

        @atask(name="processes.local", namespace="processes", mechanism="process")
        def local() -> None: ...

    with pytest.raises(TypeError, match="'async', 'thread' or 'process'"):

        @atask(name="processes.fiber", namespace="processes", mechanism="fiber")  # type: ignore[call-overload]
        def fiber() -> None: ...

    def in_main() -> None: ...

    in_main.__module__, in_main.__qualname__ = "__main__", "in_main"
    with pytest.raises(TypeError, match="not in the script being run"):
        atask(name="processes.main", namespace="processes", mechanism="process")(in_main)

    assert workload.cpu_sum.mechanism == "process"
    assert workload.pid.mechanism == "async"


async def test_a_process_atask_runs_in_a_worker_of_its_server(served: Router) -> None:
    total, worker = await workload.cpu_sum(1000)
    assert total == sum(range(1000))
    assert worker != os.getpid()
    assert (await workload.cpu_sum(10))[1] == worker  # an idle worker takes the next call


async def test_its_exceptions_arrive_with_the_workers_traceback(served: Router) -> None:
    with pytest.raises(LookupError, match="no-such-key") as caught:
        await workload.lookup_in_process("no-such-key")
    notes = "\n".join(caught.value.__notes__)
    assert "Traceback in worker process" in notes
    assert "lookup_in_process" in notes


async def test_cpu_bound_work_does_not_stall_the_servers_loop(
    served: Router, tmp_path: Path
) -> None:
    marker = tmp_path / "spin"
    spinning = asyncio.ensure_future(workload.spin(str(marker), 60))
    worker = await running_on(marker)
    for _ in range(20):  # the server's own loop answers while the worker spins
        assert await asyncio.wait_for(workload.pid(), 10) == os.getpid()
    assert not spinning.done()
    (tmp_path / "spin.stop").touch()
    assert await asyncio.wait_for(spinning, 30) == [worker, os.getpid()]


async def test_a_call_past_its_deadline_kills_its_worker_and_the_next_call_works(
    served: Router, tmp_path: Path
) -> None:
    await workload.cpu_sum(1)  # a worker is up: the spin starts well before its deadline
    marker = tmp_path / "spin"
    with pytest.raises(TimeoutError):
        async with atasks.deadline(2):
            await workload.spin(str(marker), 60)
    killed = int(marker.read_text())
    await until(lambda: not alive(killed), within=10)  # killed and reaped
    total, worker = await workload.cpu_sum(100)
    assert total == sum(range(100))
    assert worker != killed


async def test_cancelling_the_caller_kills_the_worker(served: Router, tmp_path: Path) -> None:
    marker = tmp_path / "spin"
    spinning = asyncio.ensure_future(workload.spin(str(marker), 60))
    worker = await running_on(marker)
    spinning.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spinning
    await until(lambda: not alive(worker), within=10)
    assert (await workload.cpu_sum(3))[0] == 3


async def test_a_worker_that_dies_fails_its_call_and_a_retry_gets_a_new_one(
    served: Router, tmp_path: Path
) -> None:
    marker = tmp_path / "died"
    survivor = await workload.die_once(str(marker))  # attempt 1 ends its worker: exit code 3
    died = int(marker.read_text())
    assert survivor != died
    assert not alive(died)
    with pytest.raises(RuntimeError, match=r"worker process \d+ running .*exit_with died"):
        await workload.exit_with(4)
    assert (await workload.cpu_sum(3))[0] == 3


async def test_a_worker_that_died_idle_is_not_given_a_call() -> None:
    pool = ProcessPool(1)
    try:
        _, first = await pool.run(workload.cpu_sum.fn, [1], {})
        os.kill(first, signal.SIGKILL)  # say, the OOM killer
        (idle,) = pool._idle  # white box: wait until the pool's loop knows it is gone
        await idle.process.wait()
        total, second = await pool.run(workload.cpu_sum.fn, [10], {})
        assert (total, second != first) == (45, True)
    finally:
        await pool.close()
    assert not alive(second)


async def test_an_atasks_run_server_with_one_process(servers: Servers, tmp_path: Path) -> None:
    server = servers.start("--processes", "1")
    await atasks.setup("amqp", url=servers.url)
    await wait_until_served(workload.ready)
    first, second = tmp_path / "first", tmp_path / "second"
    calls = [asyncio.ensure_future(workload.spin(str(m), 60)) for m in (first, second)]
    worker = await running_on(first)
    assert await asyncio.wait_for(workload.pid(), 10) == server.pid  # the server answers
    (tmp_path / "first.stop").touch()
    assert await running_on(second) == worker  # one worker: the second call waited for it
    (tmp_path / "second.stop").touch()
    assert await asyncio.wait_for(asyncio.gather(*calls), 30) == [[worker, server.pid]] * 2

    killed_marker = tmp_path / "killed"
    with pytest.raises(TimeoutError):
        async with atasks.deadline(3):
            await workload.spin(str(killed_marker), 60)
    await until(lambda: not alive(int(killed_marker.read_text())), within=10)
    total, replacement = await workload.cpu_sum(10)
    assert (total, replacement != worker) == (45, True)
