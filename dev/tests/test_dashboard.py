"""The dashboard's JSON and server-sent-event endpoints, over loopback HTTP, against a real
RabbitMQ with a server of the test's namespace running in this process (events on)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from dashboards import NS, add, dashboard_at, flaky, outer
from servers import REPO, publish_probe

import atasks
from atasks.dashboard.command import listen
from atasks.events import SERVER_ID
from atasks.transport.backends.amqp.dead import purge_dead_letters

pytestmark = pytest.mark.timeout(120)


async def sse(response: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """The (event, data) pairs of a server-sent-event stream."""
    kind, data = "message", ""
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif not line and data:
            yield kind, json.loads(data)
            kind, data = "message", ""


async def until_listed(http: httpx.AsyncClient, path: str, found: Any, within: float = 30) -> Any:
    """GET ``path`` until ``found(body)`` is true; that body."""
    async with asyncio.timeout(within):
        while True:
            body = (await http.get(path)).json()
            if found(body):
                return body
            await asyncio.sleep(0.1)


async def test_overview_calls_and_dead_letters(amqp_url: str, tmp_path: Path) -> None:
    await purge_dead_letters(amqp_url, NS)
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS, events=True)
    async with dashboard_at(amqp_url) as base, httpx.AsyncClient(base_url=base, timeout=30) as http:
        page = await http.get("/")
        assert page.status_code == 200
        assert "atasks dashboard" in page.text
        script = await http.get("/static/dashboard.js")
        assert script.status_code == 200
        assert "EventSource" in script.text

        view = (await http.get("/api/overview")).json()
        assert view["namespace"] == NS
        (server,) = view["servers"]
        assert (server["server"], server["events"]) == (SERVER_ID, True)
        assert server["slots"] == {"concurrency": 64, "running": 0, "parked": 0, "waiting": 0}
        assert {add.name, outer.name, flaky.name} <= set(server["atasks"])
        queues = {row["atask"]: row for row in view["queues"]}
        assert queues[add.name]["queue"] == f"atasks.{NS}.{add.name}"
        assert (queues[add.name]["messages"], queues[add.name]["servers"]) == (0, 1)
        assert queues[add.name]["consumers"] >= 1
        assert view["dead_letters"] == {"queue": f"atasks-dead.{NS}", "count": 0}
        # the schedules, once this server holds the scheduler role (it competes for it)
        view = await until_listed(http, "/api/overview", lambda view: view["schedules"])
        assert view["scheduler"] == SERVER_ID
        (nightly,) = view["schedules"]
        due = dt.datetime.fromisoformat(nightly["next_due"])
        assert nightly["name"] == "nightly"
        assert (due.time(), due.utcoffset()) == (dt.time(3), dt.timedelta(0))
        assert dt.timedelta(0) < due - dt.datetime.now(dt.UTC) <= dt.timedelta(days=1)

        # the live call tree: subscribed once a probe event comes through, then a real call
        token = uuid.uuid4().hex
        async with http.stream("GET", "/api/events") as stream:
            events = sse(stream)
            assert await anext(events) == ("snapshot", [])
            async with asyncio.timeout(30):
                while not (await http.get("/api/calls")).json()["calls"]:
                    await publish_probe(amqp_url, token, NS)
                    await asyncio.sleep(0.2)
            assert (await anext(events))[1][0]["atask"] == f"probe.{token}"
            assert await outer(2) == 1
            seen: dict[str, dict[str, Any]] = {}
            async with asyncio.timeout(5):
                async for kind, nodes in events:
                    assert kind == "calls"
                    seen.update((node["call_id"], node) for node in nodes)
                    states = {(n["atask"], n["state"]) for n in seen.values()}
                    if {(outer.name, "succeeded"), (add.name, "succeeded")} <= states:
                        break
        (top,) = [n for n in seen.values() if n["atask"] == outer.name]
        children = [n for n in seen.values() if n["atask"] == add.name]
        assert top["parent"] is None
        assert top["duration"] > 0
        assert len(children) == 2
        assert {n["parent"] for n in children} == {top["call_id"]}
        listed = (await http.get("/api/calls")).json()["calls"]
        assert [n["atask"] for n in listed][-3:] == [outer.name, add.name, add.name]

        # a dead letter, listed, then replayed from the page's endpoint
        marker = tmp_path / "marker"
        await flaky(str(marker))
        body = await until_listed(http, "/api/dead", lambda body: body["count"] == 1)
        (letter,) = body["dead_letters"]
        assert letter["atask"] == flaky.name
        assert "no " + str(marker) in letter["error"]
        assert await until_listed(http, "/api/overview", lambda v: v["dead_letters"]["count"])
        replay = f"{base}/api/dead/replay"
        plain = await http.post(replay, content=b"{}")
        assert plain.status_code == 415  # a form from another site cannot send JSON
        elsewhere = await http.post(replay, json={}, headers={"Origin": "http://example.test"})
        assert elsewhere.status_code == 403
        assert (await http.post(replay, json={"call_id": 7})).status_code == 400
        assert (await http.get("/api/dead")).json()["count"] == 1  # none of these replayed it
        marker.write_text("")
        done = (await http.post(replay, json={"call_id": letter["call_id"]})).json()
        assert done == {"replayed": [letter["call_id"]], "left": []}
        async with asyncio.timeout(30):
            while not marker.with_suffix(".done").exists():
                await asyncio.sleep(0.05)
        await until_listed(http, "/api/dead", lambda body: body["count"] == 0)


async def test_the_endpoints_say_when_the_broker_cannot_be_reached() -> None:
    async with (
        dashboard_at("amqp://guest:guest@127.0.0.1:1/") as base,
        httpx.AsyncClient(base_url=base, timeout=30) as http,
    ):
        for path in ("/api/overview", "/api/dead"):
            answer = await http.get(path)
            assert answer.status_code == 503
            assert answer.json()["error"].startswith("cannot ")
        assert (await http.get("/api/calls")).json() == {"namespace": NS, "calls": []}


async def test_the_command_serves_until_interrupted(amqp_url: str) -> None:
    """``atasks dashboard`` as a user runs it: it says where, serves, and stops on SIGINT
    within a second or two, even with a page following the event stream."""
    command = [sys.executable, "-m", "atasks", "dashboard", "--url", amqp_url]
    process = subprocess.Popen(
        [*command, "--namespace", NS, "--port", "0"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = await asyncio.wait_for(asyncio.to_thread(process.stdout.readline), 30)
        assert first.startswith(f"dashboard of namespace {NS!r} at http://127.0.0.1:"), first
        base = first.split(" at ")[1].split()[0].rstrip("/")
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            assert (await http.get("/api/overview")).json()["namespace"] == NS
            async with http.stream("GET", "/api/events") as stream:
                assert await anext(sse(stream)) == ("snapshot", [])
                stopping = time.monotonic()
                process.send_signal(signal.SIGINT)
                code = await asyncio.to_thread(process.wait, 30)
        took = time.monotonic() - stopping
        assert code == 0, process.stderr.read() if process.stderr else ""
        assert took < 5
        assert process.stderr is not None
        assert "Error" not in process.stderr.read()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()


def test_the_command_says_when_its_port_is_taken() -> None:
    with listen("127.0.0.1", 0) as taken:
        port = str(taken.getsockname()[1])
        done = subprocess.run(
            [sys.executable, "-m", "atasks", "dashboard", "--port", port],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr.startswith(f"Error: cannot listen on 127.0.0.1 port {port}: "), done.stderr
