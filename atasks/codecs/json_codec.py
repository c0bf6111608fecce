"""JSON: interoperable and safe to decode, for JSON types only."""

from __future__ import annotations

import json
from typing import Any

from atasks.codecs.base import Codec
from atasks.errors import DecodeError, EncodeError


class JSONCodec(Codec):
    """dict, list, str, int, float, bool and None. Tuples arrive as lists.

    Exceptions travel as type name, message and traceback; builtin and atasks exception types are
    rebuilt on the awaiting side, anything else arrives as ``RemoteError``.
    """

    content_type: str = "application/json"

    def dumps(self, obj: Any) -> bytes:
        try:
            return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise EncodeError(f"not JSON: {exc}") from exc

    def loads(self, content: bytes) -> Any:
        try:
            return json.loads(content)
        except (ValueError, UnicodeDecodeError) as exc:
            raise DecodeError(f"invalid JSON: {exc}") from exc

    def _identity(self) -> tuple[Any, ...]:
        return ()
