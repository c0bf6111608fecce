"""The namespace keys, for rotating without downtime: ``ATASKS_SECRET=new,old`` (or
``PickleCodec(key=[new, old])``) holds several, the first signs and any of them verifies.

Keys never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from atasks.errors import ConfigurationError

SECRET_ENV = "ATASKS_SECRET"
Keys = tuple[bytes, ...]
"""The keys in force, the signing one first; never empty."""


def parse(text: str) -> Keys:
    """The keys of ``ATASKS_SECRET``'s text: comma-separated, each stripped of surrounding
    whitespace; ``ValueError`` (saying which, never what) for an empty one."""
    parts = [part.strip() for part in text.split(",")]
    for number, part in enumerate(parts, start=1):
        if not part:
            raise ValueError(
                f"key {number} of {len(parts)} is empty: separate non-empty keys with commas, "
                "the signing key first"
            )
    return tuple(part.encode() for part in parts)


def from_env() -> Keys | None:
    """``ATASKS_SECRET``'s keys, ``None`` when it is unset or blank; ``ConfigurationError``
    naming the variable (not its value) when a key in it is empty."""
    text = os.environ.get(SECRET_ENV, "")
    if not text.strip():
        return None
    try:
        return parse(text)
    except ValueError as exc:
        raise ConfigurationError(f"{SECRET_ENV}: {exc}") from None


def given(key: str | bytes | Sequence[str | bytes], where: str) -> Keys:
    """The keys given in code: one (a ``str`` or ``bytes``, used exactly as given, commas
    included) or a sequence of them, the signing key first."""
    items = [key] if isinstance(key, str | bytes) else list(key)
    if not items:
        raise ConfigurationError(f"{where} got no keys: give one, or several (the first signs)")
    keys: list[bytes] = []
    for item in items:
        if not isinstance(item, str | bytes):
            raise ConfigurationError(
                f"{where} takes keys as str or bytes, not {type(item).__name__}"
            )
        if not item:
            raise ConfigurationError(
                f"{where} needs non-empty keys: an empty one would sign nothing. "
                "Leave key out for unsigned pickle."
            )
        keys.append(item.encode() if isinstance(item, str) else item)
    return tuple(keys)
