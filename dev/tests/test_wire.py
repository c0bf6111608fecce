"""The AMQP wire format, without a broker: requests, replies and frames round-trip."""

from __future__ import annotations

import time

import pytest
from pamqp.commands import Basic

from atasks.events import Progress
from atasks.transport.backends.amqp import wire
from atasks.transport.base import Item, Reply, Request


def test_a_request_round_trips_with_its_exact_deadline() -> None:
    deadline = time.time() + 12.345678901
    request = Request(
        name="resize",
        call_id="c1",
        content_type="application/json",
        body=b"[[1],{}]",
        parent_id="p1",
        deadline=deadline,
        wants_progress=True,
        headers={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "auth": "v1.x.y"},
    )
    properties = wire.request_properties(request, "reply-here", persistent=True)
    assert properties.delivery_mode == wire.PERSISTENT
    assert properties.message_id == "c1"  # its call id: no UUID made up per message
    assert properties.reply_to == "reply-here"
    assert 12_000 <= int(properties.expiration or 0) <= 12_346
    back = wire.request_from("resize", properties, request.body)
    assert back == request  # the deadline to the last bit: it travels as a string


def test_request_headers_travel_as_prefixed_amqp_headers() -> None:
    request = Request(
        name="x", call_id="c6", content_type="t", body=b"", headers={"traceparent": "00-1-2-01"}
    )
    properties = wire.request_properties(request, "r", persistent=False)
    assert properties.headers == {"atasks-ctx-traceparent": "00-1-2-01", "atasks-wire": 2}
    assert wire.request_from("x", properties, b"").headers == {"traceparent": "00-1-2-01"}
    bare = Request(name="x", call_id="c7", content_type="t", body=b"")
    assert wire.request_properties(bare, "r", persistent=False).headers == {"atasks-wire": 2}


def test_context_headers_that_are_not_text_are_ignored() -> None:
    headers = {
        "atasks-ctx-auth": 42,
        "atasks-ctx-traceparent": b"00-1-2-01",
        "atasks-ctx-bad": b"\xff",
        "other": "kept out",
    }
    assert wire.context_from(headers) == {"traceparent": "00-1-2-01"}


def test_nonsense_headers_are_ignored() -> None:
    properties = Basic.Properties(
        correlation_id="c2",
        headers={wire.H_DEADLINE: "soon", wire.H_PARENT: 42, wire.H_DELIVERIES: "many"},
    )
    request = wire.request_from("x", properties, b"")
    assert (request.deadline, request.parent_id) == (None, None)
    assert wire.deaths(properties.headers or {}) == 0


REPLIES = [
    Reply(call_id="c3", ok=True, content_type="application/json", body=b"7"),
    Reply(
        call_id="c4",
        ok=False,
        content_type="application/json",
        body=b"",
        error_type="builtins.KeyError",
        error_message="'k'",
        traceback="Traceback...",
    ),
]


@pytest.mark.parametrize("reply", REPLIES)
def test_a_reply_round_trips(reply: Reply) -> None:
    assert wire.reply_from(wire.reply_properties(reply), reply.body) == reply


def test_progress_round_trips_and_malformed_progress_is_refused() -> None:
    progress = Progress(call_id="c5", atask="import", done=3.0, total=10.0, note="rows")
    assert wire.progress_from(wire.progress_properties(progress)) == progress
    with pytest.raises(ValueError, match="malformed"):
        wire.progress_from(Basic.Properties(correlation_id="c5", headers={"atask": "x"}))


def test_frames_round_trip_and_malformed_items_are_refused() -> None:
    progress = Progress(call_id="c6", atask="export", done=1.0)
    assert wire.frames_from(wire.progress_properties(progress), b"") == [progress]
    bodies = [b"", b"one", b"\x00" * 300]
    properties = wire.items_properties("c6", 7, "application/json", "amq.gen-credits")
    assert properties.message_type == wire.FRAME
    assert wire.credit_to(properties) == "amq.gen-credits"
    packed = wire.pack_items(bodies)
    assert wire.frames_from(properties, packed) == [
        Item(7, b""),
        Item(8, b"one"),
        Item(9, b"\x00" * 300),
    ]
    for cut in (packed[:2], packed[:-1]):
        with pytest.raises(ValueError, match="cut short"):
            wire.frames_from(properties, cut)
    with pytest.raises(ValueError, match="malformed frame"):
        wire.frames_from(Basic.Properties(headers={wire.H_FRAME: "items"}), packed)


def test_a_stream_request_carries_its_window_and_credits_travel() -> None:
    request = Request(name="export", call_id="c7", content_type="x", body=b"", window=16)
    properties = wire.request_properties(request, "reply-here", persistent=False)
    assert wire.request_from("export", properties, b"").window == 16
    assert wire.window_from({wire.H_WINDOW: True}) == 0
    assert wire.window_from({wire.H_WINDOW: -3}) == 0
    assert wire.credits_from(wire.credit_properties("c7", 8)) == 8
    assert wire.credits_from(Basic.Properties(headers={wire.H_CREDITS: "8"})) == 0


def test_dead_reason_from_the_broker_or_from_atasks() -> None:
    assert wire.dead_reason({wire.FIRST_DEATH_REASON: "delivery_limit"}) == "delivery_limit"
    assert wire.dead_reason({wire.H_DEAD_REASON: "rejected"}) == "rejected"
    assert wire.dead_reason({}) == ""


def test_a_batch_and_its_replies_read_back_as_sent() -> None:
    requests = [
        Request(name="f", call_id="a", content_type="t", body=b"1", deadline=1e9, priority=7),
        Request(
            name="f",
            call_id="b",
            content_type="t",
            body=b"",
            parent_id="p",
            wants_progress=True,
            headers={"traceparent": "00-x"},
        ),
    ]
    properties = wire.batch_properties(requests, "batch:a", "replies", persistent=False)
    assert properties.message_type == wire.BATCH
    assert properties.expiration is None  # one call has no deadline: the batch never expires
    assert wire.batch_from("f", properties, wire.pack_requests(requests)) == requests
    assert wire.replies_from(wire.pack_replies(REPLIES)) == REPLIES


@pytest.mark.parametrize(
    "body",
    [b"\x00", b"\x00\x00\x00\x09not a table", b"", b"\x00\x00\x00\x00\x00\x00\x00\x09cut"],
)
def test_a_malformed_batch_is_an_error(body: bytes) -> None:
    properties = wire.batch_properties(
        [Request(name="f", call_id="a", content_type="t", body=b"")], "b", "r", persistent=False
    )
    with pytest.raises(ValueError, match="malformed"):
        wire.batch_from("f", properties, body)
