"""``atasks queues``: a namespace's request queues listed with their depth, consumers and
servers (names from RabbitMQ's management API), purged, and orphans deleted, asked or not;
the policy alone, without a broker, first."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from typing import Any

import aio_pika
import pytest
from servers import REPO

import atasks
from atasks import atask
from atasks.queue_admin import QueueRow, atask_of, format_rows, orphans, queue_name
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.queues import management_url

pytestmark = pytest.mark.timeout(180)

NAMESPACE = f"queues-{uuid.uuid4().hex[:8]}"


@atask(namespace=NAMESPACE)
async def served_here(x: int) -> int:
    return x


# --- policy ----------------------------------------------------------------------------------


def test_an_orphan_has_neither_consumer_nor_server() -> None:
    rows = [
        QueueRow("atasks.ns.a", "a", 3, 0, 0),
        QueueRow("atasks.ns.b", "b", 0, 1, 1),
        QueueRow("atasks.ns.c", "c", 0, 1, 0),  # a consumer no server owned up to: kept
        QueueRow("atasks.ns.d", "d", 0, 0, 1),  # a server between consumers: kept
    ]
    assert [row.atask for row in orphans(rows)] == ["a"]
    text = format_rows(rows, "ns")
    assert text.splitlines()[0].split() == ["queue", "atask", "messages", "consumers", "servers"]
    assert text.splitlines()[2].split() == ["atasks.ns.a", "a", "3", "0", "0", "orphan"]
    assert text.splitlines()[3].split() == ["atasks.ns.b", "b", "0", "1", "1"]
    assert format_rows([], "ns") == "no request queues in namespace 'ns'"


def test_names_of_queues_and_atasks() -> None:
    assert atask_of("ns", "atasks.ns.mod.f") == "mod.f"
    assert queue_name("ns", "mod.f") == "atasks.ns.mod.f"
    assert queue_name("ns", "atasks.ns.mod.f") == "atasks.ns.mod.f"


def test_the_management_url_comes_from_the_amqp_url() -> None:
    assert (
        management_url("amqp://u:p%40ss@10.0.0.1:5673/prod", None)
        == "http://u:p%40ss@10.0.0.1:15672/api/queues/prod?columns=name"
    )
    assert (
        management_url("amqp://u:p@127.0.0.1/", "https://127.0.0.1:443")
        == "https://u:p@127.0.0.1:443/api/queues/%2F?columns=name"
    )
    assert (
        management_url("amqp://u:p@127.0.0.1:5672", "http://admin:x@127.0.0.1:8080/")
        == "http://admin:x@127.0.0.1:8080/api/queues/%2F?columns=name"
    )


# --- on a broker -----------------------------------------------------------------------------


@pytest.fixture
def management(rabbit: RabbitNode) -> str:
    """The session node's management API, enabled the first time a test asks."""
    if not getattr(rabbit, "management_enabled", False):
        rabbit.enable_management()
        rabbit.management_enabled = True  # type: ignore[attr-defined]
    return rabbit.management_url


def queues_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", "queues", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        input=stdin,
        env={**os.environ, "ATASKS_MANAGEMENT_URL": ""},
    )


async def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(queues_cli, *args, stdin=stdin)


async def orphan(url: str, name: str, messages: int) -> str:
    """A durable request queue of the namespace no server serves, with ``messages`` in it."""
    queue = f"atasks.{NAMESPACE}.{name}"
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        await channel.declare_queue(queue, durable=True)
        for _ in range(messages):
            await channel.default_exchange.publish(aio_pika.Message(b"x"), routing_key=queue)
    return queue


async def exists(url: str, queue: str) -> bool:
    async with await aio_pika.connect(url) as connection:
        channel = await connection.channel()
        try:
            await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed:
            return False
        return True


async def listing(url: str, management: str) -> dict[str, dict[str, Any]]:
    common = ("--url", url, "--namespace", NAMESPACE, "--management-url", management)
    done = await run(*common, "--wait", "0.5", "--json")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    return {row["atask"]: row for row in json.loads(done.stdout)}


async def test_list_purge_and_delete_orphans(amqp_url: str, management: str) -> None:
    await atasks.setup("amqp", url=amqp_url, namespace=NAMESPACE, serve=True)
    assert await served_here(1) == 1
    old = await orphan(amqp_url, "renamed.old", 3)
    other = await orphan(amqp_url, "removed.other", 1)
    common = ("--url", amqp_url, "--namespace", NAMESPACE)
    mgmt = ("--management-url", management)

    found = await listing(amqp_url, management)
    assert found[served_here.name]["queue"] == f"atasks.{NAMESPACE}.{served_here.name}"
    assert (found[served_here.name]["consumers"], found[served_here.name]["servers"]) == (1, 1)
    assert found[served_here.name]["orphan"] is False
    assert (found["renamed.old"]["messages"], found["renamed.old"]["consumers"]) == (3, 0)
    assert found["renamed.old"]["orphan"] is True
    assert found["removed.other"]["messages"] == 1
    table = await run(*common, *mgmt, "--wait", "0.5")
    assert table.returncode == 0, table.stderr
    assert any(line.split()[-1] == "orphan" and old in line for line in table.stdout.splitlines())

    purged = await run("purge", "renamed.old", *common)
    assert purged.returncode == 0, purged.stderr
    assert f"purged 3 messages from {old}" in purged.stdout
    assert (await listing(amqp_url, management))["renamed.old"]["messages"] == 0
    missing = await run("purge", "never.was", *common)
    assert missing.returncode == 1
    assert "no queue" in missing.stderr

    refused = await run("delete", "--orphans", *common, *mgmt, "--wait", "0.5", stdin="n\n")
    assert refused.returncode == 1
    assert old in refused.stdout
    assert "delete these 2 queues" in refused.stdout
    assert await exists(amqp_url, old)
    assert await exists(amqp_url, other)

    agreed = await run("delete", "--orphans", *common, *mgmt, "--wait", "0.5", stdin="y\n")
    assert agreed.returncode == 0, agreed.stderr
    assert "deleted 2 queues" in agreed.stdout
    assert not await exists(amqp_url, old)
    assert not await exists(amqp_url, other)
    assert await exists(amqp_url, f"atasks.{NAMESPACE}.{served_here.name}")

    again = await orphan(amqp_url, "again", 0)
    unasked = await run("delete", "--orphans", "--yes", *common, *mgmt, "--wait", "0.5")
    assert unasked.returncode == 0, unasked.stderr
    assert "deleted 1 queue" in unasked.stdout
    assert not await exists(amqp_url, again)
    assert await served_here(2) == 2  # the served queue is there and served
    none = await run("delete", "--orphans", *common, *mgmt, "--wait", "0.5")
    assert "no orphan queues" in none.stdout


async def test_without_the_management_api(amqp_url: str) -> None:
    """Only the served queues can be listed, with a warning; orphans cannot be found."""
    await atasks.setup("amqp", url=amqp_url, namespace=NAMESPACE, serve=True)
    assert await served_here(1) == 1
    nowhere = "http://127.0.0.1:9/"  # discard: nothing listens
    common = ("--url", amqp_url, "--namespace", NAMESPACE, "--management-url", nowhere)
    listed = await run(*common, "--wait", "0.5", "--json")
    assert listed.returncode == 0, listed.stderr
    assert "only the queues of servers that answered" in listed.stderr
    assert [row["atask"] for row in json.loads(listed.stdout)] == [served_here.name]
    refused = await run("delete", "--orphans", "--yes", *common, "--wait", "0.5")
    assert refused.returncode == 1
    assert "cannot find orphans" in refused.stderr
