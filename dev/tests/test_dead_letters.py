"""``atasks dead list|replay|purge`` against a real RabbitMQ: dead letters made cheaply (a
fire-and-forget request, without ``reply_to``, that its server refuses; a request expired in
its queue), listed without losing any, replayed, purged."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import aio_pika
import pytest
from servers import REPO
from test_amqp_servers import queue_length

import atasks
from atasks import atask
from atasks.transport.backends.amqp.dead import list_dead_letters

pytestmark = pytest.mark.timeout(120)

NS = "deadtest"
DEAD = f"atasks-dead.{NS}"


@atask(namespace=NS)
async def record(path: str) -> str:
    Path(path).write_text("ran")  # noqa: ASYNC240 - a few bytes
    return path


def dead(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", "dead", *args, "--url", url, "--namespace", NS],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def run_dead(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(dead, url, *args)


async def length(url: str, queue: str) -> int:
    return await queue_length(url, queue)


async def wait_length(url: str, queue: str, count: int) -> None:
    """Until ``queue`` holds ``count`` messages (a quorum queue's count settles a moment
    after a change)."""
    async with asyncio.timeout(30):
        while await length(url, queue) != count:
            await asyncio.sleep(0.05)


async def publish(
    url: str, routing_key: str, message: aio_pika.Message, exchange: str = ""
) -> None:
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        target = (
            channel.default_exchange
            if not exchange
            else await channel.get_exchange(exchange, ensure=False)
        )
        await target.publish(message, routing_key=routing_key)


async def test_list_replay_and_purge_dead_letters(amqp_url: str, tmp_path: Path) -> None:
    router = await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)
    transport = atasks.get_transport(NS)
    queue = f"atasks.{NS}.{record.name}"
    assert (await run_dead(amqp_url, "purge")).returncode == 0  # from an earlier broker run
    connection = await aio_pika.connect(amqp_url)
    replies = await (await connection.channel()).declare_queue(exclusive=True)

    # rejected: a request without reply_to, which its server dead-letters at once
    await publish(amqp_url, queue, aio_pika.Message(b"?", correlation_id="no-reply-to"))
    await wait_length(amqp_url, DEAD, 1)
    # expired: a request that waits for a server longer than its expiration
    await router.deactivate()
    marker = tmp_path / "ran"
    body = await atasks.get_codec(NS).encode([[str(marker)], {}, record.name, "expires"])
    request = aio_pika.Message(
        body,
        correlation_id="expires",
        reply_to=replies.name,
        content_type=atasks.get_codec(NS).content_type,
        expiration=0.2,
    )
    await publish(amqp_url, queue, request)
    await wait_length(amqp_url, DEAD, 2)

    listed = await run_dead(amqp_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    report = json.loads(listed.stdout)
    assert (report["queue"], report["count"]) == (DEAD, 2)
    letters = report["dead_letters"]
    assert [(d["atask"], d["reason"]) for d in letters] == [
        (record.name, "rejected"),
        (record.name, "expired"),
    ]
    assert letters[0]["call_id"] == "no-reply-to"
    # no reply_to: fire and forget, refused by its server for want of a content type
    assert letters[0]["error"].startswith("atasks.errors.NoCodecRegistered: request is ''")
    assert letters[1]["error"] == ""  # expired in its queue: it never ran
    assert letters[0]["reply_to"] is None
    assert letters[1]["reply_to"] is not None
    assert all(d["queue"] == queue for d in letters)
    assert all(0 <= d["age"] < 60 for d in letters)

    text = (await run_dead(amqp_url, "list")).stdout.splitlines()
    assert text[0] == f"2 dead letters in {DEAD}"
    assert text[1].split() == ["count", "atask", "reason", "age", "last", "error"]
    assert sorted(line.split()[:3] for line in text[3:]) == [
        ["1", record.name, "expired"],
        ["1", record.name, "rejected"],
    ]

    for _ in range(25):  # more than RabbitMQ 4.x's default delivery limit of 20
        assert len(await list_dead_letters(amqp_url, NS)) == 2
    await wait_length(amqp_url, DEAD, 2)  # listing lost nothing

    skipped = await run_dead(amqp_url, "replay", "--atask", "no.such.atask")
    assert skipped.stdout == "replayed 0 dead letters\n"
    one = await run_dead(amqp_url, "replay", "--atask", record.name, "--limit", "1")
    assert one.stdout == "replayed 1 dead letter\n"
    await wait_length(amqp_url, queue, 1)  # the oldest, back in its queue; nobody serves it
    await wait_length(amqp_url, DEAD, 1)
    rest = await run_dead(amqp_url, "replay")
    assert rest.stdout == "replayed 1 dead letter\n"
    await wait_length(amqp_url, queue, 2)
    await wait_length(amqp_url, DEAD, 0)

    await router.activate(transport)  # the expired call runs now; the other is rejected again
    async with replies.iterator() as answers:
        reply = await asyncio.wait_for(anext(answers), 30)
        await reply.ack()
    assert (reply.correlation_id, reply.type) == ("expires", "ok")
    assert await atasks.get_codec(NS).decode(reply.body) == str(marker)
    assert marker.read_text() == "ran"
    await wait_length(amqp_url, DEAD, 1)
    again = await list_dead_letters(amqp_url, NS)
    assert [(d.call_id, d.reason) for d in again] == [("no-reply-to", "rejected")]

    purged = await run_dead(amqp_url, "purge")
    assert purged.stdout == "purged 1 dead letter\n"
    await wait_length(amqp_url, DEAD, 0)
    assert (await run_dead(amqp_url, "list")).stdout == f"no dead letters in {DEAD}\n"
    await connection.close()


async def test_a_dead_letter_whose_queue_is_gone_stays_put(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace=NS)  # declares the topology
    assert (await run_dead(amqp_url, "purge")).returncode == 0
    # as atasks dead-letters a request of a classic queue: its own header, no death record
    letter = aio_pika.Message(
        b"x", correlation_id="gone-1", headers={"atasks-dead-reason": "delivery_limit"}
    )
    await publish(amqp_url, f"atasks.{NS}.gone", letter, exchange=DEAD)
    await wait_length(amqp_url, DEAD, 1)
    (listed,) = await list_dead_letters(amqp_url, NS)
    assert (listed.atask, listed.reason, listed.age()) == ("gone", "delivery_limit", None)
    assert listed.error == (
        "atasks.errors.DeliveryLimitExceeded: atask 'gone' was delivered, and each time its "
        "server died, was killed or lost its connection while running it"
    )
    assert "?" in (await run_dead(amqp_url, "list")).stdout.splitlines()[-1]
    replay = await run_dead(amqp_url, "replay")
    assert replay.returncode == 1
    assert replay.stdout == "replayed 0 dead letters\n"
    assert "left gone [gone-1] in place: no queue 'atasks.deadtest.gone'" in replay.stderr
    await wait_length(amqp_url, DEAD, 1)
    assert (await run_dead(amqp_url, "purge")).stdout == "purged 1 dead letter\n"


def test_a_namespace_without_dead_letters_says_so(amqp_url: str) -> None:
    never = "atasks-dead.never-served"
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "atasks",
            "dead",
            "list",
            "--url",
            amqp_url,
            "--namespace",
            "never-served",
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"queue": never, "count": 0, "dead_letters": []}
