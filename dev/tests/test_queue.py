"""Fire and forget (``@atask_queue``, ``Router.enqueue``) and broadcast (``@atask_broadcast``):
in this process over loopback and both brokers, then with ``atasks run`` servers that are
killed, restarted or many."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import workload
from servers import REPO, Servers, until, watch_events

import atasks
from atasks import Backoff, Retry, atask, atask_broadcast, atask_queue
from atasks.events import Event
from atasks.router import Router
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.dead import list_dead_letters
from atasks.transport.backends.amqp.topology import Topology

pytestmark = pytest.mark.timeout(120)

ran: dict[str, list[object]] = {}
attempts: dict[str, int] = {}


@atask_queue
async def remember(key: str, value: object) -> str:
    ran.setdefault(key, []).append(value)
    return "dropped: nobody awaits it"


@atask_queue(retry=Retry(attempts=3, backoff=Backoff.constant(0)))
async def always_fails(key: str) -> None:
    attempts[key] = attempts.get(key, 0) + 1
    raise LookupError(f"no {key} here")


@atask_queue(timeout=0.3)
async def too_slow(key: str) -> None:
    await asyncio.sleep(30)


@atask_broadcast
async def everyone(key: str) -> None:
    ran.setdefault(key, []).append(os.getpid())


@atask
async def plain(key: str) -> str | None:
    ran.setdefault(key, []).append(atasks.current_call_id())
    return atasks.current_call_id()


CLASSIC = "queueclassic"


@atask_queue(namespace=CLASSIC, retry=Retry(attempts=2, backoff=Backoff.constant(0)))
async def fails_on_classic(key: str) -> None:
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < 3:
        raise LookupError(f"attempt {attempts[key]}")


def _key(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name}-{time.monotonic_ns()}"


async def _dead(router: Router, amqp: bool, call_id: str) -> tuple[str, str]:
    """The reason and last error of the dead letter of ``call_id``, once there is one."""
    async with asyncio.timeout(30):
        while True:
            if amqp:
                url = router.transport.url  # type: ignore[attr-defined]
                letters = await list_dead_letters(url, router.namespace)
                found = [d for d in letters if d.call_id == call_id]
                if found:
                    return found[0].reason, found[0].error
            else:
                transport = router.transport
                assert isinstance(transport, atasks.LoopbackTransport)
                for dead in transport.dead_letters:
                    if dead.request.call_id == call_id:
                        return dead.reason, dead.error
            await asyncio.sleep(0.05)


# --- in this process: loopback and both brokers -----------------------------------------


async def test_awaiting_returns_once_accepted_then_one_server_runs_it(
    served: Router, request: pytest.FixtureRequest
) -> None:
    key = _key(request)
    assert await remember(key, 1) is None  # the atask's return value goes nowhere
    assert await remember(key, 2) is None
    await until(lambda: sorted(ran.get(key, [])) == [1, 2])  # type: ignore[type-var]


async def test_any_atask_can_be_enqueued_under_a_call_id_of_ones_choosing(
    served: Router, request: pytest.FixtureRequest
) -> None:
    key = _key(request)
    call_id = f"nightly@{key}"
    assert await served.enqueue(plain, (key,), {}, call_id=call_id) == call_id
    generated = await served.enqueue(plain, (key,), {})
    await until(lambda: len(ran.get(key, [])) == 2)
    assert sorted(ran[key]) == sorted([call_id, generated])  # type: ignore[type-var]


async def test_a_request_sent_before_any_server_waits_for_one(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    router = await atasks.setup(transport_kind, url=url, serve=False)
    key = _key(request)
    await remember(key, "early")  # nobody serves it yet: neither refused nor lost
    assert ran.get(key) is None
    await router.activate()
    await until(lambda: ran.get(key) == ["early"])


async def test_a_failing_call_is_retried_then_dead_lettered_with_its_last_error(
    served: Router, transport_kind: str, request: pytest.FixtureRequest
) -> None:
    key = _key(request)
    call_id = await served.enqueue(always_fails, (key,), {})
    reason, error = await _dead(served, transport_kind == "amqp", call_id)
    assert (reason, error) == ("failed", f"builtins.LookupError: no {key} here")
    assert attempts[key] == 3
    assert served.statistics().retried == 2


async def test_classic_request_queues_serve_and_dead_letter_them_too(
    amqp_url: str, request: pytest.FixtureRequest
) -> None:
    router = await atasks.setup(
        "amqp", url=amqp_url, serve=True, namespace=CLASSIC, queue_type="classic"
    )
    key = _key(request)
    call_id = await router.enqueue(fails_on_classic, (key,), {})
    assert await _dead(router, True, call_id) == ("failed", "builtins.LookupError: attempt 2")
    again = await router.enqueue(fails_on_classic, (key,), {})  # attempt 3 succeeds
    await until(lambda: attempts[key] == 3)
    await router.deactivate()  # after the ack: no dead letter for it
    assert [d.call_id for d in await list_dead_letters(amqp_url, CLASSIC)].count(again) == 0


async def test_the_timeout_counts_from_when_a_server_starts_it(
    served: Router, transport_kind: str
) -> None:
    call_id = await served.enqueue(too_slow, ("slow",), {})
    reason, error = await _dead(served, transport_kind == "amqp", call_id)
    assert reason == "failed"
    assert error.startswith("builtins.TimeoutError: ")


async def test_a_broadcast_runs_on_the_one_server_here(
    served: Router, request: pytest.FixtureRequest
) -> None:
    key = _key(request)
    assert await everyone(key) is None
    await until(lambda: ran.get(key) == [os.getpid()])


async def test_a_broadcast_nobody_serves_is_job_not_found(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    await atasks.setup(transport_kind, url=url, serve=False)
    with pytest.raises(atasks.JobNotFound, match="no server serves atask"):
        await everyone(_key(request))


async def test_activate_queue_and_activate_broadcast_serve_like_activate(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    router = await atasks.setup(transport_kind, url=url, serve=False)
    with pytest.raises(atasks.JobNotFound, match="no atask 'nope' is registered"):
        await router.activate_queue("nope", router.transport)
    await router.activate_queue(remember.name, router.transport)
    await router.activate_broadcast(everyone.name, router.transport)  # already: a no-op
    assert router.active
    assert remember.name in router.statistics().atasks
    key = _key(request)
    await remember(key, 1)
    await everyone(key)
    await until(lambda: sorted(map(str, ran.get(key, []))) == sorted(["1", str(os.getpid())]))


def test_decorators_say_what_they_are_and_refuse_unknown_options() -> None:
    assert (remember.kind, everyone.kind, plain.kind) == ("queue", "broadcast", "call")
    assert repr(remember).startswith("<atask queue ")
    with pytest.raises(TypeError, match="unknown @atask_queue option retries"):
        atask_queue(retries=3)  # type: ignore[call-overload]


# --- with `atasks run` servers, over a broker ---------------------------------------------


def _lines(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def _start(servers: Servers, count: int, *args: str) -> None:
    for _ in range(count):
        servers.start(*args)
    for index in range(count):
        await servers.wait_serving(index)


async def test_each_queued_request_runs_on_exactly_one_of_two_servers(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    await _start(servers, 2)
    await atasks.setup("amqp", url=amqp_url)
    tally = tmp_path / "tally"
    tokens = [f"t{i}" for i in range(40)]
    for token in tokens:
        await workload.queued_tally(str(tally), token, 0.05)
    await until(lambda: sum(line[0] == "done" for line in _lines(tally)) == len(tokens))
    started = sorted(token for kind, token, _ in _lines(tally) if kind == "start")
    assert started == sorted(tokens)  # each once: no server ran one another had


async def test_a_queued_request_survives_its_server_being_killed_mid_run(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    await _start(servers, 2)
    await atasks.setup("amqp", url=amqp_url)
    tally = tmp_path / "tally"
    await workload.queued_tally(str(tally), "once", 2.0)
    await until(lambda: len(_lines(tally)) == 1)
    ((_, _, first),) = _lines(tally)
    os.kill(int(first), signal.SIGKILL)  # mid-run: the broker hands it to the other server
    await until(lambda: any(line[0] == "done" for line in _lines(tally)))
    (_, _, again), (_, _, done) = _lines(tally)[1:]
    assert again == done != first  # run again, to the end, at least once


async def test_queued_requests_survive_a_broker_restart(
    rabbit_factory: Callable[[Path], RabbitNode], tmp_path: Path
) -> None:
    with rabbit_factory(tmp_path / "rabbit") as node:
        await atasks.setup("amqp", url=node.url)
        tally = tmp_path / "tally"
        tokens = [f"t{i}" for i in range(20)]
        for token in tokens:  # no server yet: the queue holds them
            await workload.queued_tally(str(tally), token, 0)
        await atasks.close()
        await asyncio.to_thread(node.restart)
        servers = Servers(node.url, tmp_path)
        try:
            await _start(servers, 1)
            await until(lambda: sum(line[0] == "done" for line in _lines(tally)) == len(tokens))
            assert sorted(line[1] for line in _lines(tally) if line[0] == "done") == sorted(tokens)
        finally:
            servers.stop_all()


def _dead_list(url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", "dead", "list", "--url", url, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_failing_queued_request_is_retried_then_a_dead_letter_and_events(
    servers: Servers, amqp_url: str
) -> None:
    await _start(servers, 1, "--events")
    await atasks.setup("amqp", url=amqp_url)
    events: list[Event] = []
    watcher = await watch_events(amqp_url, events)
    try:
        call_id = await atasks.get_router().enqueue(workload.queued_fail, ("boom",), {})
        await until(lambda: any(e.call_id == call_id and e.kind == "dead" for e in events))
    finally:
        watcher.cancel()
    kinds = [e.kind for e in events if e.call_id == call_id]
    assert kinds == ["received", "started", "retrying", "started", "failed", "dead"]
    async with asyncio.timeout(30):
        while True:
            listed = await asyncio.to_thread(_dead_list, amqp_url)
            assert listed.returncode == 0, listed.stderr
            mine = [d for d in json.loads(listed.stdout)["dead_letters"] if d["call_id"] == call_id]
            if mine:
                break
            await asyncio.sleep(0.1)
    assert (mine[0]["atask"], mine[0]["reason"], mine[0]["reply_to"]) == (
        workload.queued_fail.name,
        "failed",
        None,
    )
    assert mine[0]["error"] == "builtins.LookupError: boom"


async def _bound_to_broadcasts(rabbit: RabbitNode, name: str, count: int) -> None:
    """Until ``count`` queues, one a server, are bound to the broadcast exchange for ``name``:
    a server whose connection was lost as it started logs that it serves before its queue
    (gone with the connection) is back, and a broadcast sent meanwhile does not reach it."""
    exchange = Topology("default").broadcast_exchange

    def bound() -> int:
        listed = rabbit.ctl(
            "list_bindings", "source_name", "routing_key", "--no-table-headers", "-q"
        )
        return sum(line.split("\t") == [exchange, name] for line in listed.splitlines())

    async with asyncio.timeout(60):
        while await asyncio.to_thread(bound) < count:
            await asyncio.sleep(0.1)


async def test_a_broadcast_reaches_every_subscribed_server(
    servers: Servers, rabbit: RabbitNode, amqp_url: str, tmp_path: Path
) -> None:
    await _start(servers, 3)
    await _bound_to_broadcasts(rabbit, workload.broadcast_tally.name, 3)
    await atasks.setup("amqp", url=amqp_url)
    tally = tmp_path / "tally"
    await workload.broadcast_tally(str(tally), "hello")
    await until(lambda: len(_lines(tally)) == 3)
    pids = {process.pid for process in servers.processes}
    assert {int(pid) for _, pid in _lines(tally)} == pids
    await workload.broadcast_tally(str(tally), "again")  # one copy each, not more
    await until(lambda: len(_lines(tally)) == 6)
    assert sorted(token for token, _ in _lines(tally)) == ["again"] * 3 + ["hello"] * 3


async def test_a_2019_transport_says_it_has_no_fire_and_forget() -> None:
    from test_compat import QueueTransport

    transport = QueueTransport(namespace="classic-queue")
    atasks.PickleCodec(namespace="classic-queue")
    await transport.connect()
    try:
        router = atasks.get_router("classic-queue")
        with pytest.raises(atasks.ConfigurationError, match="no fire-and-forget requests"):
            await router.enqueue(remember, ("k", 1), {})
        with pytest.raises(atasks.ConfigurationError, match="no broadcast requests"):
            await router.broadcast(everyone, ("k",), {})
    finally:
        await transport.disconnect()
