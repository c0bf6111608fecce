"""Synchronous callers, call ids and parents, progress, events and inspect — for real."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
import workload
from servers import REPO, Servers, publish_probe, until, wait_until_served, watch_events

import atasks
from atasks.events import Event, Progress
from atasks.router import Router

pytestmark = pytest.mark.timeout(120)


SYNC_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    sys.path.insert(0, "dev/tests")
    import atasks, workload

    atasks.setup_blocking("amqp", url=sys.argv[1])
    out = {"pid": atasks.run_sync(workload.pid())}

    results, errors = [], []
    def worker(n):
        try:
            for i in range(20):
                results.append(atasks.run_sync(workload.slow_pid(0.001)))
        except Exception as exc:
            errors.append(repr(exc))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads: t.start()
    for t in threads: t.join()
    out["thread_calls"], out["thread_errors"] = len(results), errors

    try:
        atasks.run_sync(workload.fail_with("no such key"))
    except LookupError as exc:
        out["error"] = [type(exc).__name__, str(exc)]

    start = time.monotonic()
    try:
        atasks.run_sync(workload.mark_then_sleep(sys.argv[2], 30), timeout=0.5)
    except TimeoutError:
        out["timeout_after"] = time.monotonic() - start

    async def inside_a_loop():
        try:
            atasks.run_sync(workload.pid())
        except RuntimeError as exc:
            return str(exc)
    out["in_loop"] = asyncio.run(inside_a_loop())
    print(json.dumps(out))
    """
)


async def test_a_sync_script_calls_a_server_from_many_threads(
    servers: Servers, amqp_url: str, tmp_path: Path
) -> None:
    server = servers.start("--events")
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    marker = tmp_path / "marker"
    events: list[Event] = []
    watcher = await watch_events(amqp_url, events)
    script = tmp_path / "sync_client.py"
    script.write_text(SYNC_SCRIPT)
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-W", "error", str(script), amqp_url, str(marker)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # a clean exit: no warnings, no tracebacks
    out = json.loads(result.stdout)
    assert out["pid"] == server.pid
    assert out["thread_calls"] == 160
    assert out["thread_errors"] == []
    assert out["error"] == ["LookupError", "no such key"]
    assert 0.5 <= out["timeout_after"] < 3
    assert "await" in out["in_loop"]

    # the timed-out call ended on the server too: cancelled by its caller, or by its deadline
    def ended() -> list[str | None]:
        return [
            e.error if e.kind == "failed" else e.kind
            for e in events
            if e.atask == workload.mark_then_sleep.name and e.kind in ("cancelled", "failed")
        ]

    await until(lambda: bool(ended()), within=10)
    watcher.cancel()
    first = ended()[0]
    assert first == "cancelled" or str(first).startswith("builtins.TimeoutError")


async def test_events_show_a_nested_call_tree_with_parent_ids(
    servers: Servers, amqp_url: str
) -> None:
    servers.start("--events")
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    events: list[Event] = []
    watcher = await watch_events(amqp_url, events)
    innermost, middle, outer = await workload.nested(3)
    await workload.count_up(2)
    await until(
        lambda: (
            sum(e.atask == workload.count_up.name and e.kind == "succeeded" for e in events) == 1
            and sum(e.kind == "succeeded" and e.call_id == outer for e in events) == 1
        )
    )
    watcher.cancel()
    progress = [e.progress for e in events if e.kind == "progress"]
    assert progress == [
        {"done": 1, "total": 2, "note": "step 1"},
        {"done": 2, "total": 2, "note": "step 2"},
    ]
    by_call = {e.call_id: e for e in events if e.atask == workload.nested.name}
    assert by_call[outer].parent_id is None
    assert by_call[middle].parent_id == outer
    assert by_call[innermost].parent_id == middle
    kinds = [e.kind for e in events if e.call_id == innermost]
    assert kinds == ["received", "started", "succeeded"]
    finished = next(e for e in events if e.call_id == outer and e.kind == "succeeded")
    assert finished.duration is not None
    assert finished.duration > 0


async def test_events_command_prints_an_indented_tree(servers: Servers, amqp_url: str) -> None:
    servers.start("--events")
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    watcher = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "atasks",
        "events",
        "--url",
        amqp_url,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert watcher.stdout is not None
    output: list[str] = []

    async def read() -> None:
        assert watcher.stdout is not None
        async for line in watcher.stdout:
            output.append(line.decode())

    reader = asyncio.ensure_future(read())
    try:
        token = uuid.uuid4().hex
        async with asyncio.timeout(30):  # subscribed once it prints a probe of ours
            while not any(token[:8] in line for line in output):
                await publish_probe(amqp_url, token)
                await asyncio.sleep(0.1)
        ids = await workload.nested(3)
        await until(lambda: sum("nested" in line for line in output) >= 9)
    finally:
        watcher.terminate()
        await asyncio.wait_for(watcher.wait(), 10)
        await asyncio.wait_for(reader, 10)
        assert watcher.stderr is not None
        errors = (await watcher.stderr.read()).decode()
    lines = [line for line in output if "nested" in line]
    assert len(lines) == 9, "".join(output) + errors
    succeeded = [line for line in lines if "succeeded" in line]
    indents = sorted(
        len(line.split("✓")[0]) - len(line.split("✓")[0].rstrip()) for line in succeeded
    )
    assert indents[0] < indents[1] < indents[2]
    # Whole call ids (the calls of one process share their first 16 digits), in time order:
    shown = [line.split("[")[1].split("]")[0] for line in lines]
    assert sorted(set(shown)) == sorted(str(i) for i in ids)
    assert shown.index(str(ids[2])) < shown.index(str(ids[0]))  # the outermost started first


async def test_inspect_sees_two_servers_and_their_calls_in_progress(
    servers: Servers, amqp_url: str
) -> None:
    pids = {servers.start().pid, servers.start().pid}
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)

    async def ours() -> list[dict[str, Any]]:  # servers of other tests may linger a moment
        return [s for s in json.loads(await _inspect(amqp_url, "--json")) if s["pid"] in pids]

    async with asyncio.timeout(30):  # both servers up and answering
        while len(await ours()) < 2:
            await asyncio.sleep(0.2)
    calls = [asyncio.ensure_future(workload.slow_pid(5)) for _ in range(6)]
    async with asyncio.timeout(30):
        while True:
            table = await ours()
            if len(table) == 2 and sum(s["running"] + s["parked"] for s in table) == 6:
                break
            await asyncio.sleep(0.2)
    assert all(s["namespace"] == "default" for s in table)
    assert all(workload.slow_pid.name in s["atasks"] for s in table)
    text = await _inspect(amqp_url)
    assert text.splitlines()[0].split()[:3] == ["host", "pid", "namespace"]
    servers_table, queues_table = text.split("\n\n")
    assert len(servers_table.splitlines()) == 4
    assert queues_table.splitlines()[0].split() == [
        "atask",
        "queue",
        "waiting",
        "consumers",
        "servers",
    ]
    await asyncio.gather(*calls)


async def _inspect(url: str, *args: str) -> str:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "atasks", "inspect", "--url", url, "--wait", "0.5", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def test_the_awaiting_side_observes_progress(served: Router) -> None:
    reports: list[Progress] = []
    async with atasks.observe_progress(reports.append):
        assert await workload.count_up(3) == 3
    assert [(p.done, p.total, p.note) for p in reports] == [
        (1, 3, "step 1"),
        (2, 3, "step 2"),
        (3, 3, "step 3"),
    ]
    assert await workload.count_up(2) == 2  # not observed: nothing sent back
    assert len(reports) == 3
