"""The codec contract: objects ⇄ bytes, labelled with a media type that travels with them."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from typing import Any, ClassVar

from atasks.binding import BindOnConstruction
from atasks.errors import DecodeError, EncodeError
from atasks.settings import DEFAULT_NAMESPACE


class Codec(metaclass=BindOnConstruction):
    """Turns call arguments, results and exceptions into bytes and back.

    A subclass implements ``encode``/``decode`` — ``async`` as the 2019 README shows them, or
    plain — or the synchronous ``dumps``/``loads``, on top of which the base class provides
    awaitable ``encode``/``decode``. The router calls ``dumps``/``loads`` directly where they are
    the implementation, so a synchronous codec costs no await per call.

    ``content_type`` travels with every message; it defaults to one derived from the class name.
    Constructing a codec installs it in ``namespace`` (``None`` leaves it detached); the bare
    ``Codec()`` can be constructed, and its methods raise ``NotImplementedError``.
    """

    content_type: str = "application/x-atasks-codec"
    installs_as: ClassVar[str] = "codec"
    _derived_content_type: ClassVar[bool] = True
    _fast_encode: ClassVar[bool] = False
    _fast_decode: ClassVar[bool] = False
    _strict: ClassVar[bool] = False
    """Set by a codec whose ``dumps`` returns bytes and raises only ``EncodeError``, and whose
    ``loads`` raises only ``DecodeError``: the router calls them with nothing around them.
    Kept by a subclass that overrides neither."""
    _encode_now: ClassVar[Callable[[Any, Any], bytes]]
    _decode_now: ClassVar[Callable[[Any, bytes], Any]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "content_type" in vars(cls):
            cls._derived_content_type = False
        elif cls._derived_content_type:  # not set by this class, nor by a parent: its own
            name = re.sub(r"[^A-Za-z0-9.+-]", "-", cls.__qualname__)
            cls.content_type = f"application/x-atasks-codec; name={name}"
        # The router's fast path: call dumps/loads directly where encode/decode are the base's.
        cls._fast_encode = cls.encode is Codec.encode and cls.dumps is not Codec.dumps
        cls._fast_decode = cls.decode is Codec.decode and cls.loads is not Codec.loads
        own = vars(cls)
        cls._strict = own.get("_strict", cls._strict and "dumps" not in own and "loads" not in own)
        cls._encode_now = cls.dumps if cls._strict else encode_now
        cls._decode_now = cls.loads if cls._strict else decode_now

    @classmethod
    def _missing(cls) -> tuple[str, ...]:
        if cls is Codec:
            return ()
        missing = []
        if cls.encode is Codec.encode and cls.dumps is Codec.dumps:
            missing.append("encode (or dumps)")
        if cls.decode is Codec.decode and cls.loads is Codec.loads:
            missing.append("decode (or loads)")
        return tuple(missing)

    def __init__(self, namespace: str | None = DEFAULT_NAMESPACE) -> None:
        self.namespace = namespace

    async def encode(self, obj: Any) -> bytes:
        """Bytes for ``obj``; raise ``EncodeError`` when it cannot be encoded.

        Overrides may be ``async`` or plain.
        """
        return self.dumps(obj)

    async def decode(self, content: bytes) -> Any:
        """The object behind ``content``; raise ``DecodeError`` when it cannot be decoded.

        Overrides may be ``async`` or plain.
        """
        return self.loads(content)

    def dumps(self, obj: Any) -> bytes:
        """``encode`` without awaiting, for codecs that never need to."""
        raise NotImplementedError(f"{type(self).__name__} does not implement encoding")

    def loads(self, content: bytes) -> Any:
        """``decode`` without awaiting, for codecs that never need to."""
        raise NotImplementedError(f"{type(self).__name__} does not implement decoding")

    def signing_key(self) -> bytes | None:
        """The key this codec signs messages with, if it signs: the namespace's key, which
        also signs auth contexts (see ``atasks.auth``)."""
        return None

    def _identity(self) -> tuple[Any, ...] | None:
        """What makes two codecs of one class interchangeable; ``None``: only the same object."""
        return None

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Codec)
        mine = self._identity()
        return self is other if mine is None else mine == other._identity()

    def __hash__(self) -> int:
        mine = self._identity()
        return id(self) if mine is None else hash((type(self), mine))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(namespace={self.namespace!r})"


async def encode(codec: Codec, obj: Any) -> bytes:
    """``codec``'s bytes for ``obj``, without an await where the codec is synchronous; failures
    as ``EncodeError``."""
    if codec._fast_encode:
        return codec._encode_now(obj)
    try:
        content: Any = codec.encode(obj)
        if inspect.isawaitable(content):
            content = await content
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f"{codec!r} cannot encode {_brief(obj)}: {exc}") from exc
    return _as_bytes(codec, content)


def encode_now(codec: Codec, obj: Any) -> bytes:
    """``encode`` for a codec whose ``_fast_encode`` holds (its ``dumps`` is the
    implementation): the router's hot path, with no coroutine to create. The router calls it as
    ``codec._encode_now(obj)``, which is ``dumps`` itself for a ``_strict`` codec."""
    try:
        content: Any = codec.dumps(obj)
    except EncodeError:
        raise
    except Exception as exc:
        raise EncodeError(f"{codec!r} cannot encode {_brief(obj)}: {exc}") from exc
    return content if type(content) is bytes else _as_bytes(codec, content)


def _as_bytes(codec: Codec, content: Any) -> bytes:
    if not isinstance(content, bytes | bytearray | memoryview):
        raise EncodeError(f"{codec!r}.encode returned {type(content).__name__}, not bytes")
    return bytes(content)


async def decode(codec: Codec, content: bytes) -> Any:
    """The object ``codec`` reads in ``content``, without an await where the codec is
    synchronous; failures as ``DecodeError``."""
    if codec._fast_decode:
        return codec._decode_now(content)
    try:
        obj = codec.decode(content)
        if inspect.isawaitable(obj):
            obj = await obj
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{codec!r} cannot decode {len(content)} bytes: {exc}") from exc
    return obj


def decode_now(codec: Codec, content: bytes) -> Any:
    """``decode`` for a codec whose ``_fast_decode`` holds (its ``loads`` is the
    implementation), with no coroutine to create; called as ``codec._decode_now(content)``."""
    try:
        return codec.loads(content)
    except DecodeError:
        raise
    except Exception as exc:
        raise DecodeError(f"{codec!r} cannot decode {len(content)} bytes: {exc}") from exc


def _brief(obj: Any) -> str:
    text = repr(obj)
    return text if len(text) <= 200 else text[:200] + "…"
