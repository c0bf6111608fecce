"""Direct replies resumed after a reconnect (the default): the policies without a broker, then a
reply sent while its caller was away, which still reaches it once reconnected, run once."""

from __future__ import annotations

import asyncio
import gc
import itertools
import logging
from pathlib import Path

import pytest
import workload
from proxy import Proxy
from servers import Servers, wait_until_served

import atasks
from atasks.errors import StreamInterrupted
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp.resume import (
    interrupt_streams,
    is_direct,
    pack_ids,
    schedule,
    unpack_ids,
)
from atasks.transport.backends.amqp.server.resuming import Resuming
from atasks.transport.backends.amqp.topology import DIRECT_REPLY_TO
from atasks.transport.messages import Reply

OLD = f"{DIRECT_REPLY_TO}.old"
NEW = f"{DIRECT_REPLY_TO}.new"


def reply(call_id: str) -> Reply:
    return Reply(call_id=call_id, ok=True, content_type="", body=call_id.encode())


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_questions_are_asked_less_and_less_often_then_steadily() -> None:
    assert list(itertools.islice(schedule((1.0, 2.0, 5.0)), 6)) == [1, 2, 5, 5, 5, 5]


def test_call_ids_travel_one_a_line_in_bounded_messages() -> None:
    ids = {f"call-{i}" for i in range(25_001)}
    bodies = pack_ids(ids)
    assert len(bodies) == 3
    assert {call_id for body in bodies for call_id in unpack_ids(body)} == ids
    assert unpack_ids(b"") == []
    with pytest.raises(ValueError, match="UTF-8"):
        unpack_ids(b"\xff")


def test_only_direct_reply_to_addresses_are_direct() -> None:
    assert is_direct(OLD)
    assert not is_direct("atasks-replies.default.host.1.ab")
    assert not is_direct(None)


def test_a_reply_to_a_direct_address_is_kept_and_sent_again_to_the_new_one() -> None:
    resuming = Resuming()
    assert resuming.sending(OLD, reply("a")) == (OLD, True)
    assert resuming.sending("atasks-replies.q", reply("b")) == ("atasks-replies.q", False)
    assert resuming.resume(["a", "b"], NEW, lambda _: None) == [reply("a")]
    # "b" went to a durable queue: not kept; it is moved, should its reply come again.
    assert resuming.sending(OLD, reply("b")) == (NEW, True)


def test_a_call_not_answered_yet_moves_to_the_new_address() -> None:
    resuming = Resuming()
    assert resuming.resume(["a"], NEW, lambda _: None) == []
    assert resuming.sending(OLD, reply("a")) == (NEW, True)
    assert resuming.sending(OLD, reply("other")) == (OLD, True)


def test_a_reply_kept_for_a_lost_connection_is_sent_to_the_new_address() -> None:
    resuming = Resuming()
    kept = {"a": reply("a")}
    assert resuming.resume(["a", "b"], NEW, kept.get) == [reply("a")]
    assert resuming.sending(OLD, reply("b")) == (NEW, True)


def test_what_is_kept_is_bounded_in_number_and_in_time() -> None:
    clock = Clock()
    resuming = Resuming(most=2, seconds=10, clock=clock)
    for call_id in "abc":
        resuming.sending(OLD, reply(call_id))
    assert resuming.resume(["a"], NEW, lambda _: None) == []  # the oldest, forgotten
    clock.now = 11
    resuming.sending(OLD, reply("d"))
    assert resuming.resume(["b", "c"], NEW, lambda _: None) == []  # too old
    assert len(resuming.sent) == 1
    assert len(resuming.moved) == 2


def test_what_is_kept_is_bounded_in_bytes() -> None:
    resuming = Resuming(size=10)
    for call_id in ("aaaa", "bbbb", "cccc"):  # each reply's body is its call id: 4 bytes
        resuming.sending(OLD, reply(call_id))
    assert resuming.sent.bytes == 8
    assert resuming.resume(["aaaa", "bbbb", "cccc"], NEW, lambda _: None) == [
        reply("bbbb"),
        reply("cccc"),
    ]
    resuming.sending(OLD, reply("cccc"))  # sent again: counted once
    assert resuming.sent.bytes == 8


async def test_a_lost_connection_interrupts_streams_only() -> None:
    loop = asyncio.get_running_loop()
    pending = {call_id: loop.create_future() for call_id in ("call", "stream", "done")}
    pending["done"].set_result(None)
    cancelled: list[str] = []
    interrupt_streams(pending, ["stream", "done", "gone"], cancelled.append)
    assert set(pending) == {"call"}
    assert not pending["call"].done()
    assert cancelled == ["stream"]  # asked to stop on its server


@pytest.mark.timeout(120)
async def test_a_stream_across_a_lost_connection_is_interrupted_not_left_waiting(
    servers: Servers, rabbit: RabbitNode
) -> None:
    """Its items sent while the caller was away went to an address that died with the
    connection: the stream ends with ``StreamInterrupted`` at once, and a plain call made after
    the reconnect works."""
    servers.start()
    async with Proxy(rabbit.port) as proxy:
        await atasks.setup("amqp", url=proxy.url)
        await servers.wait_serving(0, within=60)
        await wait_until_served(workload.ready)
        received = []
        with pytest.raises(StreamInterrupted, match="direct replies"):
            async with asyncio.timeout(30):
                async for item in workload.numbers("cut", None, pause=0.01):
                    received.append(item)
                    if len(received) == 3:
                        assert proxy.cut() == 1
        assert received[:3] == [0, 1, 2]
        assert await asyncio.wait_for(workload.pid(), 60) > 0


@pytest.mark.timeout(120)
async def test_a_reply_sent_while_its_caller_was_away_reaches_it_once_back(
    servers: Servers, rabbit: RabbitNode, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The client's connection is cut while its call runs and kept away until the server has
    answered to the dead address: once back, the client asks to resume the call and gets its
    reply, which the server kept; the call ran once."""
    caplog.set_level(logging.DEBUG, logger="atasks.amqp")
    markers = tmp_path / "markers"
    markers.mkdir()
    servers.start()
    async with Proxy(rabbit.port) as proxy:
        await atasks.setup("amqp", url=proxy.url)
        await servers.wait_serving(0, within=60)
        await wait_until_served(workload.ready)
        call = asyncio.ensure_future(workload.gated(str(markers)))
        async with asyncio.timeout(30):
            while not (markers / "runs").exists():
                await asyncio.sleep(0.01)
        proxy.refusing = True
        assert proxy.cut() == 1
        (markers / "go").touch()
        async with asyncio.timeout(30):
            while not (markers / "done").exists():
                await asyncio.sleep(0.01)
        # The client keeps trying meanwhile: two refused attempts after the reply was sent.
        tried = proxy.tried
        async with asyncio.timeout(60):
            await proxy.wait_tried(tried + 2)
        assert not call.done()
        proxy.refusing = False
        assert await asyncio.wait_for(call, 60) == 1  # run once
        assert proxy.accepted == 2
    assert any("resume" in record.getMessage() for record in caplog.records)


def test_a_failed_reply_comes_back_whole_and_none_is_kept_as_an_object() -> None:
    """Kept as plain values (which the garbage collector stops tracking on a busy server) and
    made again, every field as sent."""
    resuming = Resuming()
    failed = Reply(
        call_id="f",
        ok=False,
        content_type="application/x-python-pickle",
        body=b"exception",
        error_type="builtins.ValueError",
        error_message="bad",
        traceback="Traceback…",
    )
    resuming.sending(OLD, failed)
    resuming.sending(OLD, reply("ok"))
    assert resuming.resume(["f", "ok"], NEW, lambda _: None) == [failed, reply("ok")]
    gc.collect()  # a collection untracks each tuple of plain values it meets
    assert not any(gc.is_tracked(item) for item in resuming.sent._items.values())


def test_a_full_memory_forgets_a_hundredth_more_at_once() -> None:
    """Past its bound it forgets down to 99% of it, so that it does not look at each put."""
    resuming = Resuming(most=200)
    for number in range(200):
        resuming.sending(OLD, reply(f"call-{number}"))
    assert len(resuming.sent) == 200
    resuming.sending(OLD, reply("one-too-many"))
    assert len(resuming.sent) == 198  # the three oldest forgotten
    assert "call-2" not in resuming.sent.ids
    assert "call-3" in resuming.sent.ids
    resuming.sending(OLD, reply("room-for-it"))
    assert len(resuming.sent) == 199
