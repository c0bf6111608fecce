"""The entries of a message of several calls (a ``batch`` of requests, or ``replies``): each
call's id, kind, content type, headers and body, one after another (``wire.py`` says what the
messages are)."""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping
from typing import Any

from pamqp import decode, encode

_SIZE = struct.Struct(">I")
_SHORT = struct.Struct(">H")
_NO_TABLE = _SIZE.pack(0)


def pack_entry(
    parts: list[bytes],
    call_id: str,
    kind: int,
    content_type: str,
    headers: Mapping[str, Any] | None,
    body: bytes,
) -> None:
    """One call's entry in a message of several: its call id and content type (each a 16-bit
    length and UTF-8), its kind (a byte), its headers (an AMQP field table, empty for most), and
    its body (a 32-bit length and the bytes)."""
    ident = call_id.encode()
    middle = _middles.get((content_type, kind))
    if middle is None:
        middle = _middle(content_type, kind)
    if headers:
        middle += encode.field_table(dict(headers))
    else:
        middle += _NO_TABLE
    parts += (_SHORT.pack(len(ident)), ident, middle, _SIZE.pack(len(body)), body)


_middles: dict[tuple[str, int], bytes] = {}  # by content type and kind: what follows the id


def _middle(content_type: str, kind: int) -> bytes:
    """An entry's content type (its 16-bit length and UTF-8) and kind byte, remembered for the
    few content types a process speaks."""
    media = content_type.encode()
    middle = _SHORT.pack(len(media)) + media + bytes((kind,))
    if len(_middles) < 64:
        _middles[(content_type, kind)] = middle
    return middle


def entries(body: bytes) -> Iterable[tuple[str, int, str, dict[str, Any], bytes]]:
    """The entries of a message of several calls: call id, kind, content type, headers, body."""
    at, end = 0, len(body)
    short, size_at = _SHORT.unpack_from, _SIZE.unpack_from
    while at < end:
        try:
            (size,) = short(body, at)
            at += 2
            if at + size > end:
                raise ValueError("a text cut short")
            call_id = body[at : at + size].decode()
            at += size
            (size,) = short(body, at)
            at += 2
            if at + size > end:
                raise ValueError("a text cut short")
            content_type = body[at : at + size].decode()
            at += size
            kind = body[at]
            (size,) = size_at(body, at + 1)
            headers = decode.field_table(body[at + 1 : at + 5 + size])[1] if size else {}
            at += 5 + size
            (size,) = size_at(body, at)
        except (struct.error, ValueError, TypeError, LookupError, UnicodeDecodeError) as exc:
            raise ValueError(f"malformed entry: {exc}") from None
        at += 4 + size
        if at > end:
            raise ValueError("malformed entry: a body cut short")
        if not call_id:
            raise ValueError("malformed entry: no call id")
        yield call_id, kind, content_type, headers, body[at - size : at]
