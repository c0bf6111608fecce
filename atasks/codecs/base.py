"""The codec contract: objects ⇄ bytes, labelled with a media type that travels with them."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Awaitable
from typing import Any

from atasks.errors import DecodeError, EncodeError
from atasks.namespaces import DEFAULT, bind_codec


class Codec(ABC):
    """Turns call arguments, results and exceptions into bytes and back.

    Subclasses set ``content_type`` and implement ``encode``/``decode``, either plain or ``async``.
    Constructing a codec binds it to ``namespace`` (``None`` leaves it detached).
    """

    content_type: str

    def __init__(self, *, namespace: str | None = DEFAULT) -> None:
        self.namespace = namespace
        if namespace is not None:
            bind_codec(self, namespace)

    @abstractmethod
    def encode(self, obj: Any) -> bytes | Awaitable[bytes]:
        """Bytes for ``obj``; raise ``EncodeError`` when it cannot be encoded."""

    @abstractmethod
    def decode(self, content: bytes) -> Any:
        """The object behind ``content``; raise ``DecodeError`` when it cannot be decoded."""

    def _identity(self) -> tuple[Any, ...]:
        """What makes two codecs of one class interchangeable."""
        return ()

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Codec)
        return self._identity() == other._identity()

    def __hash__(self) -> int:
        return hash((type(self), self._identity()))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"


async def encode(codec: Codec, obj: Any) -> bytes:
    """``codec.encode(obj)``, awaited if the codec is async, failures as ``EncodeError``."""
    try:
        content = codec.encode(obj)
        if type(content) is bytes:  # the common, synchronous case
            return content
        if inspect.isawaitable(content):
            content = await content
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f"{codec!r} cannot encode {_brief(obj)}: {exc}") from exc
    if not isinstance(content, bytes | bytearray | memoryview):
        raise EncodeError(f"{codec!r}.encode returned {type(content).__name__}, not bytes")
    return bytes(content)


async def decode(codec: Codec, content: bytes) -> Any:
    """``codec.decode(content)``, awaited if the codec is async, failures as ``DecodeError``."""
    try:
        obj = codec.decode(content)
        if not inspect.isawaitable(obj):
            return obj
        obj = await obj
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{codec!r} cannot decode {len(content)} bytes: {exc}") from exc
    return obj


def _brief(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 200 else text[:200] + "…"
