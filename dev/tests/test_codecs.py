"""Codecs: round trips, bad input, signatures, user codecs, media types."""

from __future__ import annotations

import pickle

import pytest

import atasks
from atasks import atask
from atasks.codecs import Codec, JSONCodec, PickleCodec
from atasks.codecs.base import decode, encode
from atasks.errors import DecodeError, EncodeError, NoCodecRegistered

VALUES = [None, 0, -1.5, "naïve", [1, [2, 3]], {"a": {"b": [True, False]}}]


@pytest.mark.parametrize("codec", [PickleCodec(namespace=None), JSONCodec(namespace=None)])
@pytest.mark.parametrize("value", VALUES)
async def test_round_trip(codec: Codec, value: object) -> None:
    assert await decode(codec, await encode(codec, value)) == value


async def test_pickle_carries_python_objects() -> None:
    codec = PickleCodec(namespace=None)
    value = {"set": {1, 2}, "tuple": (1, 2), "bytes": b"\x00"}
    assert await decode(codec, await encode(codec, value)) == value


@pytest.mark.parametrize(
    ("codec", "garbage"),
    [
        (PickleCodec(namespace=None), b"\x80\x05garbage"),
        (PickleCodec(namespace=None), pickle.dumps([1, 2, 3])[:-3]),  # truncated
        (JSONCodec(namespace=None), b"{not json"),
        (JSONCodec(namespace=None), b"\xff\xfe"),
    ],
)
async def test_bad_bytes_are_a_decode_error(codec: Codec, garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        await decode(codec, garbage)


async def test_unencodable_values_are_an_encode_error() -> None:
    with pytest.raises(EncodeError, match="lambda"):
        await encode(PickleCodec(namespace=None), lambda: None)
    with pytest.raises(EncodeError, match="not JSON"):
        await encode(JSONCodec(namespace=None), {1, 2})


async def test_signed_pickle_rejects_unsigned_and_wrongly_signed_before_unpickling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ATASKS_SECRET")  # the tests' key
    signed = PickleCodec(key="s3cret", namespace=None)
    other = PickleCodec(key="other", namespace=None)
    plain = PickleCodec(namespace=None)

    class Trap:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (pytest.fail, ("an unsigned pickle was unpickled",))

    assert await decode(signed, await encode(signed, [1, 2])) == [1, 2]
    for sender in (plain, other):
        with pytest.raises(DecodeError, match="signature"):
            await decode(signed, await encode(sender, Trap()))
    assert signed.content_type != plain.content_type
    assert signed != other
    assert signed == PickleCodec(key="s3cret", namespace=None)


def test_secret_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATASKS_SECRET", "from-env")
    assert PickleCodec(namespace=None) == PickleCodec(key="from-env", namespace=None)


class AsyncReprCodec(Codec):
    """A user codec with async methods, as the original design documented."""

    content_type = "text/x-python-repr"

    async def encode(self, obj: object) -> bytes:
        return repr(obj).encode()

    async def decode(self, content: bytes) -> object:
        import ast

        return ast.literal_eval(content.decode())


@atask(namespace="user-codec")
async def double(x: int) -> int:
    return 2 * x


async def test_user_codec_with_async_methods() -> None:
    codec = AsyncReprCodec(namespace="user-codec")
    await atasks.setup("loopback", codec=codec, namespace="user-codec")
    assert await double(21) == 42


def test_a_codec_must_implement_both_methods() -> None:
    class Half(Codec):
        content_type = "x/half"

        def encode(self, obj: object) -> bytes:
            return b""

    with pytest.raises(TypeError, match="decode"):
        Half(namespace=None)  # type: ignore[abstract]


@atask(namespace="mismatch")
async def echo(x: object) -> object:
    return x


async def test_content_in_a_codec_the_server_lacks_is_a_clear_error() -> None:
    from atasks.router import Router
    from atasks.transport.base import LoopbackTransport

    transport = LoopbackTransport(namespace="mismatch")
    await transport.connect()
    server = Router(namespace="mismatch", codec=JSONCodec(namespace=None))
    await server.activate(transport)
    client = Router(
        namespace="mismatch-client", codec=PickleCodec(namespace=None), transport=transport
    )
    with pytest.raises(NoCodecRegistered, match="application/json"):
        await client.call(echo, (1,), {})
    await server.deactivate()


class _LooseDumps(PickleCodec):
    """A pickle subclass whose own ``dumps`` breaks the contract: a ValueError, or a str."""

    content_type = "application/x-loose-pickle"

    def dumps(self, obj: object) -> bytes:
        if obj == "refuse":
            raise ValueError("refused by the subclass")
        if obj == "text":
            return "not bytes"  # type: ignore[return-value]
        return super().dumps(obj)


@atask(namespace="loose-codec")
async def same(x: object) -> object:
    return x


def test_only_a_codec_that_keeps_its_base_methods_inherits_strictness() -> None:
    """Strict: the router calls ``dumps``/``loads`` bare; a subclass that overrides either
    gets the checks again, whatever its base said."""

    class Renamed(PickleCodec):
        content_type = "application/x-renamed-pickle"

    class SaysStrict(_LooseDumps):
        _strict = True

    assert PickleCodec._strict
    assert Renamed._strict
    assert SaysStrict._strict
    assert not _LooseDumps._strict
    assert not JSONCodec._strict
    assert PickleCodec._encode_now is PickleCodec.dumps
    assert _LooseDumps._encode_now is not _LooseDumps.dumps


@pytest.mark.parametrize(
    ("value", "message"),
    [("refuse", "cannot encode 'refuse': refused by the subclass"), ("text", "returned str")],
)
async def test_a_result_the_codec_fails_on_is_a_clear_encode_error_to_the_caller(
    value: str, message: str
) -> None:
    """The server encodes ``value`` with a subclass's own ``dumps``, which breaks the contract:
    the caller gets an ``EncodeError`` that says what happened."""
    await atasks.setup("loopback", codec=_LooseDumps("loose-codec"), namespace="loose-codec")
    assert await same(1) == 1
    with pytest.raises(EncodeError, match=message):
        await same(value)
