"""The messages a transport moves: requests, replies, the frames between them, dead letters.

A transport moves opaque bytes plus a little metadata; it never sees Python objects.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from atasks.credits import Credits
from atasks.errors import type_name
from atasks.events import Progress

__all__ = [
    "NO_HEADERS",
    "REFUSED",
    "DeadRequest",
    "Frame",
    "FrameListener",
    "FrameSink",
    "Item",
    "Reply",
    "Request",
    "dead_reason",
]


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a stream, encoded: the ``seq``-th (from 0) its server sent."""

    seq: int
    body: bytes


Frame = Progress | Item
"""What a call sends back before its outcome: progress reports and stream items, in order."""
FrameSink = Callable[[Frame], Awaitable[None]]
"""Serve side: sends one frame back to the caller."""
FrameListener = Callable[[Frame], None]
"""Call side: takes each frame of a call, in order, as it arrives; must not block or raise."""


class _NoHeaders(dict[str, str]):
    """The headers of every request that carries none: empty, shared, read-only (a request
    made without headers costs no dict of its own)."""

    __slots__ = ()

    def __hash__(self) -> int:  # type: ignore[override]  # a shared default must be hashable
        return 0

    def _read_only(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a request's empty headers are shared: assign request.headers a new dict")

    __setitem__ = __delitem__ = __ior__ = _read_only
    setdefault = pop = popitem = clear = update = _read_only


NO_HEADERS: Mapping[str, str] = _NoHeaders()


@dataclass(slots=True)
class Request:
    """One call of an atask, encoded. Name the fields when you make one: the router's hot path
    passes them by position, which costs a third of the time, but that order is not an API."""

    name: str
    call_id: str
    content_type: str
    body: bytes
    parent_id: str | None = None
    deadline: float | None = None  # absolute, in time.time() seconds
    priority: int | None = None  # 0 (lowest) to 9; None: sent without one
    wants_progress: bool = False
    window: int = 0
    """A stream's window: how many items its server may run ahead (0: not a stream)."""
    headers: Mapping[str, str] = NO_HEADERS
    """Context that travels with the call, set and read by the router: ``traceparent``
    (and whatever else OpenTelemetry's propagator writes), ``auth`` (a signed snapshot). A
    transport carries every entry unchanged, names and values being short strings. To add
    one, assign a new mapping: the default is shared."""
    # Serve side only, set by the transport: sends frames back to the caller (progress reports
    # when it wants them, and a stream's items) …
    emit: FrameSink | None = field(default=None, compare=False, repr=False)
    # … and, for a stream, the credits its caller grants.
    credits: Credits | None = field(default=None, compare=False, repr=False)
    # Serve side only: the transport took a slot of the server's capacity for this request,
    # which the router's handler adopts (or gives back).
    slot_taken: bool = field(default=False, compare=False, repr=False)


@dataclass(slots=True)
class Reply:
    """The outcome of one call: an encoded result, or an exception (fields named, as for
    ``Request``).

    On failure ``body`` holds the encoded exception object, or is empty when it could not travel;
    ``error_type``, ``error_message`` and ``traceback`` always describe it in plain text.
    """

    call_id: str
    ok: bool
    content_type: str
    body: bytes
    error_type: str = ""
    error_message: str = ""
    traceback: str = ""

    @classmethod
    def failure(cls, call_id: str, exc: Exception) -> Reply:
        """A failed reply carrying only the exception's type name and message (a transport's
        own error: nothing of it needs the codec)."""
        return cls(
            call_id=call_id,
            ok=False,
            content_type="",
            body=b"",
            error_type=type_name(exc),
            error_message=str(exc),
        )


REFUSED = frozenset(
    f"atasks.errors.{name}"
    for name in ("DecodeError", "WireVersionError", "NoCodecRegistered", "JobNotFound", "AuthError")
)
"""Errors of a request refused before it ran: dead-lettered as ``rejected``, not ``failed``."""


def dead_reason(reply: Reply) -> str:
    """Why a fire-and-forget request that ended with the failed ``reply`` is a dead letter."""
    return "rejected" if reply.error_type in REFUSED else "failed"


@dataclass(frozen=True, slots=True)
class DeadRequest:
    """A fire-and-forget request a loopback transport gave up on: why, and its last error."""

    request: Request
    reason: str  # failed, rejected
    error: str  # "module.Type: message"
