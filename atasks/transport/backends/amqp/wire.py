"""How requests, replies and frames look as AMQP messages: pure functions, no I/O.

A request carries ``correlation_id`` = call id, ``reply_to``, ``content_type`` = codec media type,
``expiration`` from the deadline, ``priority`` and a few headers — among them the request's own
``headers`` (trace context, auth snapshot), each prefixed with ``atasks-ctx-``. Back on
``reply_to`` come a call's frames, then its outcome: a message's ``type`` says ``frame``
(``atasks-frame`` says which: a ``progress`` report in headers, or stream ``items``, several to
a message) or the outcome, ``ok`` or ``error`` (details in headers). A stream's caller grants
credits with ``credit`` messages to the queue its items name (``atasks-credit-to``).

Every request has a ``priority`` property, the one the broker orders by: the call's, or 4 for a
call without one. Queues disagree on a message without the property — 0 in a classic queue, 4
in a RabbitMQ 4.x quorum queue — so it is always set. The ``atasks-priority`` header says the
call has a priority of its own (the one its nested calls inherit); most calls have none, and
carry no header for it.

Calls to one atask that are ready to go in the same turn of the caller's event loop travel
together: a ``batch`` message carries several requests, each its own entry (its call id, the
headers a lone request would carry, its body), with the properties they share; the server answers
with ``replies`` messages, each carrying the replies to one caller that are ready together. A lone
request or reply is a message of its own, as above.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterable, Mapping
from typing import Any

from pamqp.commands import Basic

from atasks.calls import NORMAL_PRIORITY, priority_from
from atasks.events import Progress
from atasks.transport.backends.amqp.entries import entries, pack_entry
from atasks.transport.backends.amqp.versions import H_WIRE, WIRE_VERSION, announced
from atasks.transport.messages import Frame, Item, Reply, Request

H_DEADLINE = "atasks-deadline"
H_PARENT = "atasks-parent"
H_PRIORITY = "atasks-priority"  # only when the call has a priority (inherited by nested calls)
H_PROGRESS = "atasks-progress"
H_WINDOW = "atasks-window"  # a stream's window
H_FRAME = "atasks-frame"  # which frame: progress, items
H_SEQ = "atasks-seq"  # the seq of a message's first item
H_CREDIT_TO = "atasks-credit-to"  # the queue that takes a stream's credits
H_CREDITS = "atasks-credits"
H_DELIVERIES = "atasks-deliveries"  # how many servers died holding it (counted by atasks)
H_SUSPECT_OF = "atasks-suspect-of"  # in the suspects queue: the atask the request is for
H_UNISOLATED = "atasks-unisolated"  # a suspect sent back by a server that does not serve it
H_ERROR_TYPE = "atasks-error-type"
H_ERROR_MESSAGE = "atasks-error-message"
H_TRACEBACK = "atasks-traceback"
BROKER_DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues
FIRST_DEATH_REASON = "x-first-death-reason"
H_DEAD_REASON = "atasks-dead-reason"  # dead-lettered by atasks, not the broker
H_DEAD_AT = "atasks-dead-at"  # when atasks dead-lettered it, time.time() as text
H_LEASE_HOLDER = "atasks-lease-holder"  # the server running a leased call
H_LEASE_CALL = "atasks-lease-call"  # in a query to a lease holder: which call
FIRST_DEATH_QUEUE = "x-first-death-queue"
H_CONTEXT = "atasks-ctx-"  # prefix of the entries of Request.headers (traceparent, auth…)
H_CALLS = "atasks-calls"  # how many calls a batch carries

PERSISTENT = 2
BATCH_BYTES = 256 * 1024  # several calls or replies in one message: about this many bytes at most,
ENTRY_BYTES = 256  # counting this many for the id and headers of each
OK, ERROR, FRAME, CREDIT = "ok", "error", "frame", "credit"
BATCH, REPLIES = "batch", "replies"  # several requests, several replies
PROGRESS, ITEMS = "progress", "items"  # the kinds of frame
_SIZE = struct.Struct(">I")


def request_properties(
    request: Request, reply_to: str | None, *, persistent: bool
) -> Basic.Properties:
    """A call's properties; without ``reply_to``, a fire-and-forget or broadcast request's."""
    headers = request_headers(request)
    headers[H_WIRE] = WIRE_VERSION
    return Basic.Properties(
        headers=headers,
        content_type=request.content_type,
        delivery_mode=PERSISTENT if persistent else None,
        correlation_id=request.call_id,
        reply_to=reply_to,
        expiration=expiration(request.deadline),
        priority=broker_priority(request.priority),
        message_id=request.call_id,  # unique already: aiormq makes up a UUID for one without
    )


def request_headers(request: Request) -> dict[str, Any]:
    """The AMQP headers that carry what a request says beyond its call id and body."""
    headers: dict[str, Any] = {}
    if request.wants_progress:
        headers[H_PROGRESS] = 1
    if request.window:
        headers[H_WINDOW] = request.window
    if request.deadline is not None:
        headers[H_DEADLINE] = repr(request.deadline)  # AMQP floats are 32-bit: a string
    if request.parent_id is not None:
        headers[H_PARENT] = request.parent_id
    priority = request.priority
    if priority is not None:
        headers[H_PRIORITY] = priority
    for key, value in request.headers.items():
        headers[H_CONTEXT + key] = value
    return headers


def broker_priority(priority: int | None) -> int:
    """The ``priority`` property of a request: the call's priority, or 4 for a call without."""
    return NORMAL_PRIORITY if priority is None else priority


def request_from(name: str, properties: Basic.Properties, body: bytes) -> Request:
    """The request a delivery carries; nonsense headers are ignored."""
    return _request(
        name,
        properties.correlation_id or "",
        properties.content_type or "",
        properties.headers,
        body,
    )


def entry_size(message: Request | Reply) -> int:
    """About how many bytes a request or reply takes in a batch."""
    if isinstance(message, Reply):
        if message.ok:
            return len(message.body) + ENTRY_BYTES
        extra = len(message.error_message) + len(message.traceback)
    elif message.headers:
        extra = sum(len(key) + len(value) for key, value in message.headers.items())
    else:
        return len(message.body) + ENTRY_BYTES
    return len(message.body) + ENTRY_BYTES + extra


def batch_properties(
    requests: list[Request], batch_id: str, reply_to: str, *, persistent: bool
) -> Basic.Properties:
    """The properties of a batch of calls with one content type and priority: it expires when
    the last of them does, and carries its own ``batch_id`` as correlation id."""
    deadlines = [request.deadline for request in requests]
    latest = None if None in deadlines else max(d for d in deadlines if d is not None)
    return Basic.Properties(
        headers={H_CALLS: len(requests), H_WIRE: WIRE_VERSION},
        content_type=requests[0].content_type,
        delivery_mode=PERSISTENT if persistent else None,
        correlation_id=batch_id,
        reply_to=reply_to,
        expiration=expiration(latest),
        priority=broker_priority(requests[0].priority),
        message_type=BATCH,
        message_id=batch_id,
    )


def pack_requests(requests: Iterable[Request]) -> bytes:
    """The body of a batch: an entry per request (``entries.py``), its headers those a
    lone request would carry."""
    parts: list[bytes] = []
    for request in requests:
        pack_entry(parts, request.call_id, 0, "", request_headers(request), request.body)
    return b"".join(parts)


def batch_from(name: str, properties: Basic.Properties, body: bytes) -> list[Request]:
    """The requests of a batch; raises ``ValueError`` when it is malformed."""
    content_type = properties.content_type or ""
    requests = [
        _request(name, call_id, content_type, headers, data)
        for call_id, _, _, headers, data in entries(body)
    ]
    if not requests:
        raise ValueError("malformed batch: no calls")
    return requests


def batch_call_ids(body: bytes) -> list[str]:
    """The call ids of a batch, as far as they can be read."""
    ids: list[str] = []
    try:
        for call_id, *_ in entries(body):
            ids.append(call_id)
    except ValueError:
        pass
    return ids


def replies_properties(*, announce: bool = False) -> Basic.Properties:
    """A ``replies`` message's; a server's ``announce`` says what it reads (see versions)."""
    return Basic.Properties(headers=announced(None) if announce else None, message_type=REPLIES)


def pack_replies(replies: Iterable[Reply]) -> bytes:
    """The body of a ``replies`` message: an entry per reply (``entries.py``), its headers those
    of a lone failed reply."""
    parts: list[bytes] = []
    for reply in replies:
        if reply.ok:
            pack_entry(parts, reply.call_id, _OK, reply.content_type, None, reply.body)
        else:
            headers = _error_headers(reply)
            pack_entry(parts, reply.call_id, _ERROR, reply.content_type, headers, reply.body)
    return b"".join(parts)


def replies_from(body: bytes) -> list[Reply]:
    """The replies of a ``replies`` message; raises ``ValueError`` when it is malformed."""
    return [
        Reply(call_id, True, content_type, data)  # by position: see Request
        if kind == _OK and not headers  # most: a result
        else _reply(call_id, OK if kind == _OK else ERROR, content_type, headers, data)
        for call_id, kind, content_type, headers, data in entries(body)
    ]


_OK, _ERROR = 0, 1  # the kind of a reply's entry (a request's is 0)


def _request(
    name: str, call_id: str, content_type: str, headers: Mapping[str, Any] | None, body: bytes
) -> Request:
    if not headers:  # most calls: no deadline, parent, priority, progress, window or context
        return Request(name, call_id, content_type, body)  # by position: see Request
    parent = headers.get(H_PARENT)
    return Request(
        name=name,
        call_id=call_id,
        content_type=content_type,
        body=body,
        parent_id=parent if isinstance(parent, str) else None,
        deadline=deadline_from(headers),
        priority=priority_from(headers.get(H_PRIORITY)),
        wants_progress=bool(headers.get(H_PROGRESS)),
        window=window_from(headers),
        headers=context_from(headers),
    )


def context_from(headers: Mapping[str, Any]) -> dict[str, str]:
    """The request's own headers, from the AMQP headers with the ``atasks-ctx-`` prefix; values
    that are not text are ignored."""
    found: dict[str, str] = {}
    for key, value in headers.items():
        if key.startswith(H_CONTEXT):
            if isinstance(value, bytes):
                try:
                    value = value.decode()
                except UnicodeDecodeError:
                    continue
            if isinstance(value, str):
                found[key[len(H_CONTEXT) :]] = value
    return found


def reply_properties(reply: Reply, *, announce: bool = False) -> Basic.Properties:
    """A lone reply's; a server's ``announce`` says what it reads (see versions)."""
    headers = None if reply.ok else _error_headers(reply)
    return Basic.Properties(
        headers=announced(headers) if announce else headers,
        content_type=reply.content_type,
        correlation_id=reply.call_id,
        message_type=OK if reply.ok else ERROR,
    )


def _error_headers(reply: Reply) -> dict[str, Any]:
    return {
        H_ERROR_TYPE: reply.error_type,
        H_ERROR_MESSAGE: reply.error_message,
        H_TRACEBACK: reply.traceback,
    }


def reply_from(properties: Basic.Properties, body: bytes) -> Reply:
    return _reply(
        properties.correlation_id,
        properties.message_type,
        properties.content_type,
        properties.headers,
        body,
    )


def _reply(
    call_id: Any, kind: Any, content_type: Any, headers: Mapping[str, Any] | None, body: bytes
) -> Reply:
    headers = headers or {}
    return Reply(
        call_id=str(call_id or ""),
        ok=kind == OK,
        content_type=str(content_type or ""),
        body=body,
        error_type=str(headers.get(H_ERROR_TYPE, "")),
        error_message=str(headers.get(H_ERROR_MESSAGE, "")),
        traceback=str(headers.get(H_TRACEBACK, "")),
    )


def window_from(headers: Mapping[str, Any]) -> int:
    """A stream request's window (0 for anything else)."""
    window = headers.get(H_WINDOW)
    return window if isinstance(window, int) and not isinstance(window, bool) and window > 0 else 0


def progress_properties(progress: Progress) -> Basic.Properties:
    headers: dict[str, Any] = {
        H_FRAME: PROGRESS,
        "atask": progress.atask,
        "done": repr(progress.done),
        "note": progress.note,
    }
    if progress.total is not None:
        headers["total"] = repr(progress.total)
    return Basic.Properties(headers=headers, message_type=FRAME, correlation_id=progress.call_id)


def items_properties(
    call_id: str, first: int, content_type: str, credit_to: str
) -> Basic.Properties:
    """A message of a stream's items, the first of them its ``first``-th."""
    return Basic.Properties(
        headers={H_FRAME: ITEMS, H_SEQ: first, H_CREDIT_TO: credit_to},
        content_type=content_type,
        message_type=FRAME,
        correlation_id=call_id,
    )


def pack_items(bodies: Iterable[bytes]) -> bytes:
    """Several encoded items as one message body: each one's length, then its bytes."""
    return b"".join(_SIZE.pack(len(body)) + body for body in bodies)


def frames_from(properties: Basic.Properties, body: bytes) -> list[Frame]:
    """The frames one ``frame`` message carries; raises ``ValueError`` when it is malformed."""
    headers = properties.headers or {}
    if headers.get(H_FRAME, PROGRESS) == PROGRESS:
        return [progress_from(properties)]
    first = headers.get(H_SEQ)
    if headers.get(H_FRAME) != ITEMS or not isinstance(first, int):
        raise ValueError(f"malformed frame: {headers!r}")
    frames: list[Frame] = []
    view, at = memoryview(body), 0
    while at < len(view):
        if at + _SIZE.size > len(view):
            raise ValueError("malformed items: a length cut short")
        (size,) = _SIZE.unpack_from(view, at)
        at += _SIZE.size
        if at + size > len(view):
            raise ValueError("malformed items: an item cut short")
        frames.append(Item(first + len(frames), bytes(view[at : at + size])))
        at += size
    return frames


def credit_to(properties: Basic.Properties) -> str | None:
    """Where the credits of the stream whose items a message carries go."""
    queue = (properties.headers or {}).get(H_CREDIT_TO)
    return queue if isinstance(queue, str) else None


def credit_properties(call_id: str, credits: int) -> Basic.Properties:
    return Basic.Properties(
        headers={H_CREDITS: credits}, message_type=CREDIT, correlation_id=call_id
    )


def credits_from(properties: Basic.Properties) -> int:
    credits = (properties.headers or {}).get(H_CREDITS)
    return credits if isinstance(credits, int) and not isinstance(credits, bool) else 0


def progress_from(properties: Basic.Properties) -> Progress:
    """The report a progress message carries; raises ``ValueError`` when it is malformed."""
    headers = properties.headers or {}
    try:
        total = headers.get("total")
        return Progress(
            call_id=properties.correlation_id or "",
            atask=str(headers.get("atask", "")),
            done=float(str(headers["done"])),
            total=float(str(total)) if total is not None else None,
            note=str(headers.get("note", "")),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed progress report: {exc!r}") from exc


def deadline_from(headers: Mapping[str, Any]) -> float | None:
    text = headers.get(H_DEADLINE)
    if text is None:
        return None
    try:
        return float(str(text))
    except ValueError:
        return None


def expiration(deadline: float | None) -> str | None:
    """Per-message TTL in milliseconds, so the broker drops a request nobody awaits any more."""
    if deadline is None:
        return None
    return str(max(int((deadline - time.time()) * 1000), 1))


def deaths(headers: Mapping[str, Any]) -> int:
    """How many servers died holding a request, as atasks counted them before this delivery."""
    count = headers.get(H_DELIVERIES, 0)
    return count if isinstance(count, int) and count >= 0 else 0


def deaths_now(headers: Mapping[str, Any], *, died: bool) -> int:
    """How many servers died holding a request, this delivery included: atasks' count, plus
    the quorum queue's (``x-delivery-count``), or one if ``died`` (redelivered, say) and the
    broker counted nothing."""
    count = headers.get(BROKER_DELIVERY_COUNT)
    broker = count if isinstance(count, int) and count > 0 else 0
    return deaths(headers) + max(broker, 1 if died else 0)


def dead_letter_headers(
    headers: Mapping[str, Any], reason: str, error_type: str, error_message: str
) -> dict[str, Any]:
    """A request's headers as atasks dead-letters it: why, when, and its last error."""
    return {
        **{key: value for key, value in headers.items() if not key.startswith("x-")},
        H_DEAD_REASON: reason,
        H_DEAD_AT: repr(time.time()),
        H_ERROR_TYPE: error_type,
        H_ERROR_MESSAGE: error_message,
    }


def last_error(headers: Mapping[str, Any]) -> str:
    """The last error a dead letter records, as ``type: message``; "" if none."""
    error_type = headers.get(H_ERROR_TYPE)
    if not error_type:
        return ""
    return f"{_text(error_type)}: {_text(headers.get(H_ERROR_MESSAGE, ''))}"


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def dead_reason(headers: Mapping[str, Any]) -> str:
    """Why a dead letter died: ``delivery_limit``, ``rejected``, ``expired``…"""
    return str(headers.get(H_DEAD_REASON) or headers.get(FIRST_DEATH_REASON) or "")
