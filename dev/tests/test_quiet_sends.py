"""What is sent without a future of its own per item, pure (no broker): a call's request, whose
sender hears of it only through its reply's future when the publish fails, and a batch's
replies, whose publishes the batch counts and settles once."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace
from typing import Any, cast

import aiormq
import pytest
from pamqp.commands import Basic

from atasks.transport.backends.amqp.coalesce import Coalescer, Unsent
from atasks.transport.backends.amqp.connection import Link
from atasks.transport.backends.amqp.server.confirms import Confirms, replied
from atasks.transport.backends.amqp.server.kept import KeptReplies
from atasks.transport.backends.amqp.server.message import Message
from atasks.transport.backends.amqp.server.policies import Outcome
from atasks.transport.backends.amqp.server.settlement import Settlement
from atasks.transport.backends.amqp.topology import Topology
from atasks.transport.messages import Reply


async def test_a_quiet_waiter_hears_only_of_a_failed_send() -> None:
    sent: list[list[bytes]] = []

    async def send(key: str, items: list[bytes]) -> None:
        sent.append(items)
        if b"bad" in items:
            raise ConnectionError("gone")

    coalescer: Coalescer[str, bytes] = Coalescer(send, count=8, size=100, measure=len)
    loop = asyncio.get_running_loop()
    fine, answered, failing = loop.create_future(), loop.create_future(), loop.create_future()
    coalescer.add("k", b"fine", fine)
    coalescer.add("k", b"answered", answered)
    answered.set_result("its reply came first")  # done before the turn: not sent
    await asyncio.sleep(0)  # the flush
    await asyncio.sleep(0)  # the delivery
    assert sent == [[b"fine"]]
    assert not fine.done()  # sent: left alone, for its reply
    coalescer.add("j", b"bad", failing)
    with pytest.raises(Unsent) as unsent:
        await asyncio.wait_for(failing, 5)
    assert isinstance(unsent.value.error, ConnectionError)


async def test_a_waiter_that_is_not_quiet_hears_either_way() -> None:
    async def send(key: str, items: list[bytes]) -> None:
        if key == "refused":
            raise LookupError("refused")

    coalescer: Coalescer[str, bytes] = Coalescer(send, count=8, size=100, measure=len)
    loop = asyncio.get_running_loop()
    ok, refused = loop.create_future(), loop.create_future()
    coalescer.add("fine", b"a", ok, quiet=False)
    coalescer.add("refused", b"b", refused, quiet=False)
    assert await asyncio.wait_for(ok, 5) is None
    with pytest.raises(LookupError):
        await asyncio.wait_for(refused, 5)


def _reply(call_id: str) -> Reply:
    return Reply(call_id=call_id, ok=True, content_type="text/plain", body=b"x")


def _confirms() -> Confirms:
    # KeptReplies reaches its link only to send kept replies, which these tests never do.
    return Confirms(KeptReplies(cast(Link, None)))


async def test_a_batch_waits_once_for_its_calls_and_their_replies() -> None:
    confirms = _confirms()
    confirms.pending += 1  # a call running
    direct = confirms.sending("amq.rabbitmq.reply-to.a", _reply("a"), keep=False)
    durable = confirms.sending("atasks-replies.q", _reply("b"), keep=True)
    waiting = asyncio.ensure_future(confirms.wait())
    direct.set_result(None)
    durable.set_result(None)
    await asyncio.sleep(0)
    assert not waiting.done()  # the call still runs
    confirms.ended()
    await asyncio.wait_for(waiting, 5)
    assert confirms.failed == {}
    # A reply to a direct address is kept by its server's resuming (before it is sent), not
    # a second time here; one to a durable queue is kept until the batch is acked.
    assert "a" not in confirms.kept
    kept = confirms.kept.get("b")
    assert kept is not None
    assert kept.sent


@pytest.mark.parametrize(
    ("error", "outcome", "kept"),
    [
        (aiormq.exceptions.DeliveryError(None, Basic.Nack(delivery_tag=1)), Outcome.BACK, False),
        (ConnectionError("gone"), Outcome.KEPT, True),
        (asyncio.CancelledError(), Outcome.BACK, False),  # the server stops: handed back
    ],
)
def test_a_reply_not_sent_settles_its_call(
    error: BaseException, outcome: Outcome, kept: bool
) -> None:
    confirms = _confirms()
    sent = confirms.sending("amq.rabbitmq.reply-to.a", _reply("a"), keep=False)
    if isinstance(error, asyncio.CancelledError):
        confirms.cut_short()
    else:
        sent.set_exception(error)
    assert sent.done()
    assert confirms.pending == 0
    sent.set_result(None)  # a second word is ignored
    failed = confirms.failed["a"]
    assert replied(failed, by_caller=False) is outcome
    assert ("a" in confirms.kept) is kept
    kept_reply = confirms.kept.get("a")
    assert kept_reply is None or not kept_reply.sent  # kept to send once the broker is back


def test_a_finished_batch_leaves_nothing_for_the_garbage_collector() -> None:
    """A batch's replies once their publishes ended refer back to it no more: freed at once,
    not by a full collection later (on a busy server those cost several µs a call)."""
    gc.collect()
    gc.disable()
    try:
        confirms = _confirms()
        waiters = [
            confirms.sending("amq.rabbitmq.reply-to.a", _reply(call_id), keep=False)
            for call_id in "abc"
        ]
        waiters[0].set_result(None)
        waiters[1].set_exception(LookupError("not a connection error: counted as failed"))
        confirms.cut_short()
        assert confirms.pending == 0
        del confirms, waiters
        assert gc.collect() == 0
    finally:
        gc.enable()


def test_a_reply_cut_short_after_its_caller_cancelled_is_answered() -> None:
    assert replied(asyncio.CancelledError(), by_caller=True) is Outcome.ANSWERED
    with pytest.raises(ValueError, match="odd"):
        replied(cast(Any, ValueError("odd")), by_caller=False)


class _Recorded:
    """An aiormq channel as far as settling a request goes: what was done on it, in order,
    into a log shared with the other channel of its connection."""

    def __init__(self, name: str, log: list[tuple[str, str, str]]) -> None:
        self.name = name
        self.log = log

    async def basic_publish(
        self, body: bytes, *, routing_key: str = "", wait: bool = True, **_: Any
    ) -> None:
        self.log.append((self.name, "publish" if wait else "publish, no wait", routing_key))

    async def basic_ack(self, tag: int, wait: bool = True) -> None:
        self.log.append((self.name, "ack" if wait else "ack, no wait", str(tag)))


def _delivered(reply_to: str, channel: _Recorded) -> Any:
    return SimpleNamespace(
        body=b"request",
        channel=channel,
        header=SimpleNamespace(properties=Basic.Properties(correlation_id="c1", reply_to=reply_to)),
        delivery_tag=7,
        delivery=SimpleNamespace(consumer_tag="t"),
        redelivered=False,
    )


@pytest.mark.parametrize(
    ("reply_to", "expected"),
    [
        # A direct reply: on the request's own channel, unconfirmed and not waited for, then
        # the ack behind it.
        (
            "amq.rabbitmq.reply-to.g1h2",
            [("serve", "publish, no wait", "amq.rabbitmq.reply-to.g1h2")],
        ),
        # A durable reply queue: on the confirming channel (its publish returns once confirmed).
        ("atasks.replies.client-1", [("calls", "publish", "atasks.replies.client-1")]),
    ],
)
async def test_a_reply_goes_before_its_ack_confirmed_only_to_a_durable_queue(
    reply_to: str, expected: list[tuple[str, str, str]]
) -> None:
    log: list[tuple[str, str, str]] = []
    serve, calls = _Recorded("serve", log), _Recorded("calls", log)
    link = Link(
        ["amqp://guest:guest@127.0.0.1:5672/"],
        connect_timeout=1,
        reconnect_wait=1,
        events=False,
    )
    settlement = Settlement(link, Topology("default"))
    message = Message(_delivered(reply_to, serve), cast(aiormq.abc.AbstractChannel, calls))
    await asyncio.wait_for(
        settlement.reply_and_ack(
            message, Reply(call_id="c1", ok=True, content_type="x", body=b"r")
        ),
        5,
    )
    assert log == [*expected, ("serve", "ack, no wait", "7")]
    # A direct reply is kept for a resume, having had no confirm to wait for.
    assert ("c1" in settlement.resuming.sent.ids) is reply_to.startswith("amq.rabbitmq.reply-to")


class _Blocking(_Recorded):
    """A channel whose publish waits for ``go``, or fails with ``error``."""

    def __init__(self, log: list[tuple[str, str, str]], error: Exception | None = None) -> None:
        super().__init__("serve", log)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()
        self.error = error

    async def basic_publish(self, body: bytes, **options: Any) -> None:
        self.entered.set()
        await self.go.wait()
        if self.error is not None:
            raise self.error
        await super().basic_publish(body, **options)


def _settling(channel: _Recorded) -> tuple[Settlement, Message]:
    link = Link(
        ["amqp://guest:guest@127.0.0.1:5672/"], connect_timeout=1, reconnect_wait=1, events=False
    )
    message = Message(_delivered("amq.rabbitmq.reply-to.g1h2", channel), cast(Any, channel))
    return Settlement(link, Topology("default")), message


async def test_a_direct_reply_claims_its_ack_while_its_write_waits() -> None:
    log: list[tuple[str, str, str]] = []
    channel = _Blocking(log)
    settlement, message = _settling(channel)
    reply = Reply(call_id="c1", ok=True, content_type="x", body=b"r")
    replying = asyncio.create_task(settlement.reply_and_ack(message, reply))
    await asyncio.wait_for(channel.entered.wait(), 5)
    await message.ack()  # say, the server stopping: the reply's write carries the ack already
    assert log == []
    channel.go.set()
    await asyncio.wait_for(replying, 5)
    assert log == [
        ("serve", "publish, no wait", "amq.rabbitmq.reply-to.g1h2"),
        ("serve", "ack, no wait", "7"),
    ]


async def test_a_direct_reply_that_could_not_go_leaves_its_request_to_settle() -> None:
    log: list[tuple[str, str, str]] = []
    channel = _Blocking(log, aiormq.exceptions.ChannelInvalidStateError("closed"))
    channel.go.set()
    settlement, message = _settling(channel)
    reply = Reply(call_id="c1", ok=True, content_type="x", body=b"r")
    with pytest.raises(aiormq.exceptions.ChannelInvalidStateError):
        await asyncio.wait_for(settlement.reply_and_ack(message, reply), 5)
    assert not message.settled  # nothing went: the serve pipeline keeps the reply
    assert log == []
