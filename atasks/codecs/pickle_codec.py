"""Pickle, optionally HMAC-signed so that nothing unsigned is ever unpickled."""

from __future__ import annotations

import hashlib
import hmac
import pickle
from collections.abc import Sequence
from typing import Any

from atasks import keys
from atasks.codecs.base import Codec
from atasks.errors import DecodeError, EncodeError
from atasks.settings import DEFAULT_NAMESPACE as DEFAULT

SECRET_ENV = keys.SECRET_ENV
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

    Several keys rotate without downtime: ``key=[new, old]`` (or ``ATASKS_SECRET=new,old``)
    signs with the first and accepts a signature by any of them.

    ``key=""`` is a ``ConfigurationError``: an empty key signs nothing. An empty
    ``ATASKS_SECRET`` counts as unset (unsigned).
    """

    content_type: str = "application/x-python-pickle"
    _strict = True  # dumps and loads raise EncodeError and DecodeError, dumps returns bytes

    def __init__(
        self,
        namespace: str | None = DEFAULT,
        *,
        key: str | bytes | Sequence[str | bytes] | None = None,
    ) -> None:
        self._keys = keys.from_env() if key is None else keys.given(key, "PickleCodec(key=...)")
        self._key = self._keys[0] if self._keys else None
        if self._key is not None:
            self.content_type = "application/x-python-pickle; signed=hmac-sha256"
        super().__init__(namespace)

    @property
    def signed(self) -> bool:
        return self._key is not None

    def signing_key(self) -> bytes | None:
        return self._key

    def verifying_keys(self) -> keys.Keys:
        """Every key a signature is checked against, the signing one first; ``()`` unsigned."""
        return self._keys or ()

    def dumps(self, obj: Any) -> bytes:
        try:
            data = _dumps(obj, _PROTOCOL)
        except Exception as exc:
            raise EncodeError(f"cannot pickle {type(obj).__name__}: {exc}") from exc
        if self._key is None:
            return data
        return hmac.digest(self._key, data, _DIGEST) + data

    def loads(self, content: bytes) -> Any:
        if self._keys:
            signature, content = content[:_SIGNATURE_SIZE], content[_SIGNATURE_SIZE:]
            if (
                not hmac.compare_digest(signature, hmac.digest(self._keys[0], content, _DIGEST))
                and not any(  # the signing key first, without a generator: the common case
                    hmac.compare_digest(signature, hmac.digest(key, content, _DIGEST))
                    for key in self._keys[1:]
                )
            ):
                raise DecodeError("pickle signature missing or wrong: rejected unread")
        try:
            return _loads(content)
        except Exception as exc:
            raise DecodeError(f"cannot unpickle {len(content)} bytes: {exc!r}") from exc

    def _identity(self) -> tuple[Any, ...]:
        return (self._keys,)

    def __repr__(self) -> str:  # never the keys
        signed = ", signed" if self.signed else ""
        if self._keys and len(self._keys) > 1:
            signed += f", {len(self._keys)} keys"
        return f"PickleCodec(namespace={self.namespace!r}{signed})"
