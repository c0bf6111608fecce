"""Pickle, optionally HMAC-signed so that nothing unsigned is ever unpickled."""

from __future__ import annotations

import hashlib
import hmac
import os
import pickle
from typing import Any

from atasks.codecs.base import Codec
from atasks.errors import ConfigurationError, DecodeError, EncodeError
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT

SECRET_ENV = "ATASKS_SECRET"
_DIGEST = hashlib.sha256
_SIGNATURE_SIZE = _DIGEST().digest_size
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_dumps, _loads = pickle.dumps, pickle.loads


class PickleCodec(Codec):
    """Any picklable Python object.

    Unsigned pickle lets anyone who can publish to your broker run code in your servers. Pass
    ``key`` (or set ``ATASKS_SECRET``) to sign every message with HMAC-SHA256: a message with a
    missing or wrong signature is rejected before anything is unpickled. The router puts the
    atask name and call id inside each signed request, so a request replayed into another
    atask's queue, or under another call id, is refused.

    ``key=""`` is a ``ConfigurationError``: an empty key signs nothing. An empty
    ``ATASKS_SECRET`` counts as unset (unsigned).
    """

    content_type: str = "application/x-python-pickle"

    def __init__(self, namespace: str | None = DEFAULT, *, key: str | bytes | None = None) -> None:
        if key is None:
            key = os.environ.get(SECRET_ENV) or None
        elif not key:
            raise ConfigurationError(
                "PickleCodec(key=...) needs a non-empty key: an empty one would sign nothing. "
                "Leave key out for unsigned pickle."
            )
        self._key = key.encode() if isinstance(key, str) else key
        if self._key is not None:
            self.content_type = "application/x-python-pickle; signed=hmac-sha256"
        super().__init__(namespace)

    @property
    def signed(self) -> bool:
        return self._key is not None

    def signing_key(self) -> bytes | None:
        return self._key

    def dumps(self, obj: Any) -> bytes:
        try:
            data = _dumps(obj, _PROTOCOL)
        except Exception as exc:
            raise EncodeError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
        if self._key is None:
            return data
        return hmac.digest(self._key, data, _DIGEST) + data

    def loads(self, content: bytes) -> Any:
        if self._key is not None:
            signature, content = content[:_SIGNATURE_SIZE], content[_SIGNATURE_SIZE:]
            expected = hmac.digest(self._key, content, _DIGEST)
            if not hmac.compare_digest(signature, expected):
                raise DecodeError("pickle signature missing or wrong: rejected unread")
        try:
            return _loads(content)
        except Exception as exc:
            raise DecodeError(f"cannot unpickle {len(content)} bytes: {exc!r}") from exc

    def _identity(self) -> tuple[Any, ...]:
        return (self._key,)

    def __repr__(self) -> str:
        signed = ", signed" if self.signed else ""
        return f"PickleCodec(namespace={self.namespace!r}{signed})"
