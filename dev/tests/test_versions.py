"""The version policy (atasks.transport.backends.amqp.versions), without a broker."""

from __future__ import annotations

from typing import Any

import pytest

from atasks.transport.backends.amqp import versions, wire
from atasks.transport.backends.amqp.versions import (
    H_NEEDS,
    H_READS,
    H_WIRE,
    WIRE_VERSION,
    Peers,
    announced,
    noticed,
    reads_batches,
    sent_version,
    unreadable,
)
from atasks.transport.messages import Reply, Request


@pytest.mark.parametrize(
    ("headers", "version"),
    [({}, 1), ({H_WIRE: 2}, 2), ({H_WIRE: b"7"}, 7), ({H_WIRE: "x"}, "x"), ({H_WIRE: 0}, "0")],
)
def test_a_message_says_its_version_or_is_version_1(
    headers: dict[str, Any], version: int | str
) -> None:
    assert sent_version(headers) == version


@pytest.mark.parametrize(
    ("kind", "headers"),
    [
        (None, {}),  # the previous release's lone request
        ("batch", {}),  # and its batch
        (None, {H_WIRE: WIRE_VERSION, "atasks-some-optional-header": "ignored"}),
        ("batch", {H_WIRE: WIRE_VERSION, H_NEEDS: "batch"}),
    ],
)
def test_what_this_version_reads(kind: str | None, headers: dict[str, Any]) -> None:
    assert unreadable(kind, headers) is None


@pytest.mark.parametrize(
    ("kind", "headers", "says"),
    [
        (None, {H_WIRE: WIRE_VERSION + 1}, f"version {WIRE_VERSION + 1}, newer than"),
        ("batch", {H_WIRE: 99}, "version 99, newer than"),
        (None, {H_WIRE: True}, "not a number"),
        ("batch2", {}, "type 'batch2' (atasks wire version 1)"),
        (None, {H_NEEDS: b"zstd, batch,  signed-batch"}, "needs zstd, signed-batch"),
    ],
)
def test_what_it_cannot_read_it_says_naming_both_versions(
    kind: str | None, headers: dict[str, Any], says: str
) -> None:
    reason = unreadable(kind, headers)
    assert reason is not None
    assert says in reason
    assert f"this server speaks atasks wire version {WIRE_VERSION}" in reason


def test_every_request_says_its_version_and_a_server_says_what_it_reads() -> None:
    request = Request(name="a", call_id="c", content_type="t", body=b"")
    assert wire.request_properties(request, "r", persistent=False).headers[H_WIRE] == 2
    batch = wire.batch_properties([request, request], "b", "r", persistent=False)
    assert batch.headers[H_WIRE] == WIRE_VERSION
    reply = Reply(call_id="c", ok=True, content_type="t", body=b"")
    assert wire.reply_properties(reply).headers is None  # not a server's word
    assert reads_batches(wire.reply_properties(reply, announce=True).headers) is True
    assert reads_batches(wire.replies_properties(announce=True).headers) is True
    failed = wire.reply_properties(Reply.failure("c", ValueError("no")), announce=True)
    assert failed.headers[wire.H_ERROR_MESSAGE] == "no"
    assert failed.headers[H_READS] == "batch"


def test_a_reply_says_whether_its_server_reads_batches() -> None:
    assert reads_batches(None) is False  # the previous release's server
    assert reads_batches({wire.H_ERROR_TYPE: "x"}) is False
    assert reads_batches(announced(None)) is True
    assert reads_batches({H_WIRE: 3, H_READS: "streams"}) is False
    assert reads_batches(noticed({wire.H_ERROR_TYPE: "x"})) is None  # a caller's notice


def test_a_caller_batches_once_told_and_stops_for_a_while_after_an_older_server() -> None:
    peers = Peers(forget_old=10)
    assert not peers.may_batch(0)
    peers.heard(batches=True, now=1)
    assert peers.may_batch(1)
    peers.heard(batches=False, now=2)  # an older server answered: none from now on
    peers.heard(batches=True, now=3)
    assert not peers.may_batch(11.9)
    assert peers.may_batch(12)  # none of the older ones answered for 10 s
    fresh = Peers()
    fresh.heard(batches=False, now=0)
    assert not fresh.may_batch(versions.FORGET_OLD + 1)  # no server said it reads them


def test_a_caller_counts_the_replies_its_calls_got_not_answers_to_queries() -> None:
    peers = Peers()
    peers.replied("query", False)  # a lease holder's answer: no word on batches
    peers.forget("query")
    peers.replied("call", True)
    assert not peers.may_batch(0)  # not until its call has it
    peers.settled("call", 0)
    assert peers.may_batch(0)
    peers.replied("notice", None)  # a caller passing on a dead letter
    peers.settled("notice", 1)
    assert peers.may_batch(1)
