"""Which wire versions meet: what a message says of its version, what a server reads, and when
a caller may send a batch. Pure: no I/O, no clock of its own.

Every request and reply carries ``atasks-wire``, the version of the wire its sender speaks (a
message without it is version 1, atasks 0.2). A request may also name, in ``atasks-needs``
(comma separated), what its reader must understand to run it; every other header a server does
not know it ignores, as it always has. A server refuses a request it cannot read — a newer
version, a need it does not know, a message type it does not know — with a reason naming both
versions, and never drops it (see ``server/unreadable.py``).

A server says in each reply what it reads (``atasks-reads``); a caller sends batches only once a
reply said ``batch``, and goes back to lone requests for a while after a reply from a server
that did not (an older one still serves its namespace). So servers and
clients may be upgraded in any order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

WIRE_VERSION = 2
"""The wire this atasks speaks: 1 was atasks 0.2 (no header); 2 adds versions and ``reads``."""
READS = frozenset({"batch"})
"""What a server of this version reads besides lone requests."""
REQUEST_TYPES = frozenset({"", "batch"})
"""The ``type`` of every request message this version reads ("" for a lone request)."""

H_WIRE = "atasks-wire"
H_NEEDS = "atasks-needs"
H_READS = "atasks-reads"
FORGET_OLD = 300.0
"""Seconds after a reply from a server that reads no batches before a caller batches again."""


def sent_version(headers: Mapping[str, Any]) -> int | str:
    """The wire version a message says it was sent in: 1 when it says none; as it came when
    it is no whole number (that too is a version this server cannot read)."""
    version = headers.get(H_WIRE)
    if version is None:
        return 1
    if isinstance(version, int) and not isinstance(version, bool) and version >= 1:
        return version
    if isinstance(version, bytes):
        version = version.decode(errors="replace")
    text = str(version)
    return int(text) if text.isdigit() and int(text) >= 1 else text


def _names(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return [name.strip() for name in str(value).split(",") if name.strip()]


def unreadable(message_type: str | None, headers: Mapping[str, Any]) -> str | None:
    """Why a server of this version cannot read a request, naming both versions; ``None``
    when it can."""
    version = sent_version(headers)
    ours = f"this server speaks atasks wire version {WIRE_VERSION}"
    if not isinstance(version, int):
        return f"the request's atasks wire version is {version!r}, not a number; {ours}"
    if version > WIRE_VERSION:
        return (
            f"the request was sent in atasks wire version {version}, newer than this "
            f"server reads: {ours} (upgrade the server)"
        )
    kind = message_type or ""
    if kind not in REQUEST_TYPES:
        return (
            f"the request is a message of type {kind!r} (atasks wire version {version}), "
            f"which {ours} does not read (upgrade the server)"
        )
    unknown = [name for name in _names(headers.get(H_NEEDS)) if name not in READS]
    if unknown:
        return (
            f"the request (atasks wire version {version}) needs {', '.join(unknown)}, "
            f"which {ours} does not read (upgrade the server)"
        )
    return None


def reads_batches(headers: Mapping[str, Any] | None) -> bool | None:
    """Whether a reply's headers say its server reads batches; ``None`` when the reply is not
    a server's word (a caller passing on a dead letter says its version, and nothing it reads).
    A reply without a version comes from a server of wire 1, which this caller batches not to."""
    headers = headers or {}
    if H_READS in headers:
        return "batch" in _names(headers[H_READS])
    return None if H_WIRE in headers else False


def noticed(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``headers`` of a reply a caller sends on a server's behalf (a dead letter's notice)."""
    return {**(headers or {}), H_WIRE: WIRE_VERSION}


def announced(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """``headers`` with what a server says of itself in a reply: its version and what it reads."""
    return {**(headers or {}), H_WIRE: WIRE_VERSION, H_READS: ",".join(sorted(READS))}


@dataclass
class Peers:
    """What a caller learnt from its servers' replies (those of its namespace, which a fleet
    upgrades together): whether calls may travel together."""

    forget_old: float = FORGET_OLD
    _batch_reader: bool = False  # a server that reads batches answered
    _old: float | None = None  # when one that reads none last did
    _replies: dict[str, bool | None] = field(default_factory=dict)  # call id: reads batches?

    def replied(self, call_id: str, batches: bool | None) -> None:
        """The reply to ``call_id`` came, saying whether its server reads batches (``None``:
        not a server's word); counted once its call has it (``settled``)."""
        self._replies[call_id] = batches

    def settled(self, call_id: str, now: float) -> None:
        batches = self._replies.pop(call_id, None)
        if batches is not None:
            self.heard(batches=batches, now=now)

    def forget(self, call_id: str) -> None:
        self._replies.pop(call_id, None)

    def heard(self, *, batches: bool, now: float) -> None:
        """A server answered; ``batches``: it said it reads batches."""
        if batches:
            self._batch_reader = True
        else:
            self._old = now

    def may_batch(self, now: float) -> bool:
        """Whether calls may travel together: a server said it reads batches, and none that
        does not answered in the last ``forget_old`` seconds."""
        if self._old is not None and now - self._old >= self.forget_old:
            self._old = None
        return self._batch_reader and self._old is None
