"""Signing keys that rotate: several keys at once (``ATASKS_SECRET=new,old``,
``PickleCodec(key=[new, old])``), the first signs and any verifies; codec to codec, auth
snapshots, and over a broker with server processes on other keys."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
import workload
from servers import Servers, wait_until_served

import atasks
from atasks import settings
from atasks.auth_context import key_for, keys_for, make_context, sign, verify
from atasks.codecs import JSONCodec, PickleCodec
from atasks.codecs.base import decode, encode
from atasks.errors import AuthError, ConfigurationError, DecodeError
from atasks.transport.base import Request

NEW, OLD = "n3w-key", "0ld-key"
WRONG = "pickle signature missing or wrong"


def codec(*keys: str) -> PickleCodec:
    return PickleCodec(namespace=None, key=list(keys))


async def reads(reader: PickleCodec, writer: PickleCodec) -> bool:
    """Whether ``reader`` accepts what ``writer`` signs (refused: the usual DecodeError)."""
    body = await encode(writer, {"x": 1})
    try:
        return bool(await decode(reader, body) == {"x": 1})
    except DecodeError as exc:
        refused = str(exc)
    assert WRONG in refused
    return False


async def test_the_first_key_signs_and_any_verifies() -> None:
    servers, new, old = codec(NEW, OLD), codec(NEW), codec(OLD)
    assert await reads(servers, new)  # a client on the new key only
    assert await reads(servers, old)  # a client still on the old key
    assert await reads(new, servers)  # replies are signed with the first key...
    assert not await reads(old, servers)  # ...which a client on the old key alone cannot read
    assert await encode(servers, 1) == await encode(new, 1)


async def test_a_dropped_key_is_refused() -> None:
    with pytest.raises(DecodeError, match=WRONG):
        await decode(codec(NEW), await encode(codec(OLD), "signed with the old key"))
    with pytest.raises(DecodeError, match=WRONG):
        await decode(codec(NEW, OLD), await encode(codec("a third key"), "never listed"))
    with pytest.raises(DecodeError, match=WRONG):
        await decode(codec(NEW, OLD), await encode(PickleCodec(namespace=None), "unsigned"))


STEPS = [(OLD,), (OLD, NEW), (NEW, OLD), (NEW,)]  # docs/guides/signing.md's rotation, step by step


@pytest.mark.parametrize("step", range(len(STEPS) - 1))
async def test_each_rotation_step_interoperates_with_the_one_before(step: int) -> None:
    before, after = codec(*STEPS[step]), codec(*STEPS[step + 1])
    assert await reads(before, after)
    assert await reads(after, before)


async def test_the_old_and_new_keys_alone_do_not_interoperate() -> None:
    assert not await reads(codec(NEW), codec(OLD))
    assert not await reads(codec(OLD), codec(NEW))


def test_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATASKS_SECRET", f" {NEW} , {OLD}")
    from_env = PickleCodec(namespace=None)
    assert from_env == codec(NEW, OLD)
    assert from_env.signing_key() == NEW.encode()
    assert from_env.verifying_keys() == (NEW.encode(), OLD.encode())
    assert settings.from_env("key") == (NEW.encode(), OLD.encode())
    monkeypatch.setenv("ATASKS_SECRET", NEW)
    assert PickleCodec(namespace=None) == PickleCodec(namespace=None, key=NEW)  # as before


def test_one_key_given_in_code_is_used_as_given() -> None:
    """Only ``ATASKS_SECRET`` is split: a key given in code may hold commas."""
    assert codec("a,b") == PickleCodec(namespace=None, key="a,b") != codec("a", "b")
    assert PickleCodec(namespace=None, key=(b"a", "b")) == codec("a", "b")


@pytest.mark.parametrize("secret", [f"{NEW},", f",{OLD}", f"{NEW},,{OLD}", f"{NEW}, ,{OLD}"])
def test_an_empty_key_in_the_environment_is_refused_without_showing_the_keys(
    monkeypatch: pytest.MonkeyPatch, secret: str
) -> None:
    monkeypatch.setenv("ATASKS_SECRET", secret)
    for make in (lambda: PickleCodec(namespace=None), lambda: settings.from_env("key")):
        with pytest.raises(
            ConfigurationError, match=r"ATASKS_SECRET: key [0-9] of [0-9] is empty"
        ) as err:
            make()
        assert NEW not in str(err.value)
        assert OLD not in str(err.value)


@pytest.mark.parametrize(
    ("key", "message"),
    [([], "no keys"), ([NEW, ""], "non-empty"), ([NEW, 7], "str or bytes, not int")],
)
def test_bad_keys_in_code(key: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PickleCodec(namespace=None, key=key)  # type: ignore[arg-type]


def test_the_keys_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATASKS_SECRET", f"{NEW},{OLD}")
    shown = [
        repr(PickleCodec(namespace=None)),
        str(PickleCodec(namespace=None)),
        repr(codec(NEW)),
        settings.markdown_table(),
        repr(settings.setting("key")),
    ]
    assert repr(PickleCodec(namespace=None)) == "PickleCodec(namespace=None, signed, 2 keys)"
    for text in shown:
        assert NEW not in text
        assert OLD not in text


def call(body: bytes = b"arguments") -> Request:
    return Request(name="rotating", call_id="call-1", content_type="x", body=body)


def test_auth_snapshots_signed_with_any_key_verify(monkeypatch: pytest.MonkeyPatch) -> None:
    context = make_context({"user": "ann"})
    request = call()
    signing_old = key_for(codec(OLD))
    assert signing_old is not None
    snapshot = sign(context.token, signing_old, request)
    assert verify(snapshot, keys_for(codec(NEW, OLD)), request).claims == {"user": "ann"}
    with pytest.raises(AuthError, match="wrong signature"):
        verify(snapshot, keys_for(codec(NEW)), request)
    # Without a signing codec, from ATASKS_SECRET: the first signs, each verifies.
    monkeypatch.setenv("ATASKS_SECRET", f"{NEW},{OLD}")
    json = JSONCodec(namespace=None)
    assert keys_for(json) == keys_for(codec(NEW, OLD))
    assert key_for(json) == key_for(codec(NEW))
    assert verify(snapshot, keys_for(json), request).expires > time.time()


@atasks.atask(namespace="rotation")
async def double(x: int) -> int:
    return 2 * x


async def test_setup_takes_several_keys() -> None:
    await atasks.setup("loopback", key=[NEW, OLD], namespace="rotation")
    assert atasks.get_codec("rotation") == codec(NEW, OLD)
    assert await double(21) == 42


async def call_with_key(url: str, key: str | list[str], marker: Path) -> int:
    """Call ``mark_then_sleep`` as a client on ``key``; the server writes ``marker`` if it ran."""
    await atasks.setup("amqp", url=url, key=key)
    try:
        return await asyncio.wait_for(workload.mark_then_sleep(str(marker), 0), 20)
    finally:
        await atasks.close()


async def test_over_a_broker(servers: Servers, amqp_url: str, tmp_path: Path) -> None:
    """Servers on ``new,old``: clients on ``new`` and on ``old,new`` are served; a client on
    ``old`` alone is served but refuses the reply. A server on ``new`` alone refuses ``old``."""
    rotating = servers.start(env={"ATASKS_SECRET": f"{NEW},{OLD}"})
    await atasks.setup("amqp", url=amqp_url, key=NEW)
    await wait_until_served(workload.ready)
    await atasks.close()
    assert await call_with_key(amqp_url, NEW, tmp_path / "new") == rotating.pid
    assert await call_with_key(amqp_url, [OLD, NEW], tmp_path / "old-new") == rotating.pid
    with pytest.raises(DecodeError, match=WRONG):
        await call_with_key(amqp_url, OLD, tmp_path / "old")
    assert (tmp_path / "old").read_text() == str(rotating.pid)  # it ran: the reply was refused

    servers.stop_all()  # the old key dropped
    dropped = servers.start(env={"ATASKS_SECRET": NEW})
    await atasks.setup("amqp", url=amqp_url, key=NEW)
    await wait_until_served(workload.ready)
    await atasks.close()
    with pytest.raises(DecodeError, match=WRONG):
        await call_with_key(amqp_url, OLD, tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    assert await call_with_key(amqp_url, NEW, tmp_path / "again") == dropped.pid
