"""How requests, replies and progress reports look as AMQP properties: pure functions, no I/O.

A request carries ``correlation_id`` = call id, ``reply_to``, ``content_type`` = codec media type,
``expiration`` from the deadline, ``priority`` and a few headers — among them the request's own
``headers`` (trace context, auth snapshot), each prefixed with ``atasks-ctx-``; a reply's
``type`` says ``ok``, ``error`` (details in headers) or ``progress`` (a report before the
outcome).

Every request has a ``priority`` property, the one the broker orders by: the call's, or 4 for a
call without one. Queues disagree on a message without the property — 0 in a classic queue, 4
in a RabbitMQ 4.x quorum queue — so it is always set. The ``atasks-priority`` header says the
call has a priority of its own (the one its nested calls inherit); most calls have none, and
carry no header for it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from pamqp.commands import Basic

from atasks.calls import NORMAL_PRIORITY, priority_from
from atasks.events import Progress
from atasks.transport.base import Reply, Request

H_DEADLINE = "atasks-deadline"
H_PARENT = "atasks-parent"
H_PRIORITY = "atasks-priority"  # only when the call has a priority (inherited by nested calls)
H_PROGRESS = "atasks-progress"
H_DELIVERIES = "atasks-deliveries"  # classic queues only: how many servers died holding it
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

PERSISTENT = 2
OK, ERROR, PROGRESS = "ok", "error", "progress"


def request_properties(
    request: Request, reply_to: str | None, *, persistent: bool
) -> Basic.Properties:
    """A call's properties; without ``reply_to``, a fire-and-forget or broadcast request's."""
    headers: dict[str, Any] = {}
    if request.wants_progress:
        headers[H_PROGRESS] = 1
    if request.deadline is not None:
        headers[H_DEADLINE] = repr(request.deadline)  # AMQP floats are 32-bit: a string
    if request.parent_id is not None:
        headers[H_PARENT] = request.parent_id
    priority = request.priority
    if priority is not None:
        headers[H_PRIORITY] = priority
    for key, value in request.headers.items():
        headers[H_CONTEXT + key] = value
    return Basic.Properties(
        headers=headers or None,
        content_type=request.content_type,
        delivery_mode=PERSISTENT if persistent else None,
        correlation_id=request.call_id,
        reply_to=reply_to,
        expiration=expiration(request.deadline),
        priority=broker_priority(priority),
    )


def broker_priority(priority: int | None) -> int:
    """The ``priority`` property of a request: the call's priority, or 4 for a call without."""
    return NORMAL_PRIORITY if priority is None else priority


def request_from(name: str, properties: Basic.Properties, body: bytes) -> Request:
    """The request a delivery carries; nonsense headers are ignored."""
    headers = properties.headers or {}
    parent = headers.get(H_PARENT)
    return Request(
        name=name,
        call_id=properties.correlation_id or "",
        content_type=properties.content_type or "",
        body=body,
        parent_id=parent if isinstance(parent, str) else None,
        deadline=deadline_from(headers),
        priority=priority_from(headers.get(H_PRIORITY)),
        wants_progress=bool(headers.get(H_PROGRESS)),
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


def reply_properties(reply: Reply) -> Basic.Properties:
    headers: dict[str, Any] | None = None
    if not reply.ok:
        headers = {
            H_ERROR_TYPE: reply.error_type,
            H_ERROR_MESSAGE: reply.error_message,
            H_TRACEBACK: reply.traceback,
        }
    return Basic.Properties(
        headers=headers,
        content_type=reply.content_type,
        correlation_id=reply.call_id,
        message_type=OK if reply.ok else ERROR,
    )


def reply_from(properties: Basic.Properties, body: bytes) -> Reply:
    headers = properties.headers or {}
    return Reply(
        call_id=properties.correlation_id or "",
        ok=properties.message_type == OK,
        content_type=properties.content_type or "",
        body=body,
        error_type=str(headers.get(H_ERROR_TYPE, "")),
        error_message=str(headers.get(H_ERROR_MESSAGE, "")),
        traceback=str(headers.get(H_TRACEBACK, "")),
    )


def progress_properties(progress: Progress) -> Basic.Properties:
    headers: dict[str, Any] = {
        "atask": progress.atask,
        "done": repr(progress.done),
        "note": progress.note,
    }
    if progress.total is not None:
        headers["total"] = repr(progress.total)
    return Basic.Properties(headers=headers, message_type=PROGRESS, correlation_id=progress.call_id)


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
    """How many servers died holding a classic-queue request (counted by atasks itself)."""
    count = headers.get(H_DELIVERIES, 0)
    return count if isinstance(count, int) and count >= 0 else 0


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
