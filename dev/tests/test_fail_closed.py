"""Fail closed: over a broker, unsigned pickle is refused by ``setup()``, ``atasks run`` and
``run_atask`` unless a key, JSON or the explicit opt-in says otherwise; loopback and the 2019
hand-made set-up are not affected."""

from __future__ import annotations

import socket

import pytest
from test_cli import atasks_run

import atasks
from atasks import atask, unsigned
from atasks.codecs import JSONCodec, PickleCodec
from atasks.errors import ConfigurationError
from atasks.namespaces import namespace

WAYS_OUT = ("ATASKS_SECRET", 'codec="json"', "insecure_pickle=True", "ATASKS_INSECURE_PICKLE=1")


@atask(namespace="fail-closed")
async def double(x: int) -> int:
    return 2 * x


@pytest.fixture
def unkeyed(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key in the environment (the tests run with one), and no opt-in."""
    monkeypatch.delenv("ATASKS_SECRET", raising=False)
    monkeypatch.delenv("ATASKS_INSECURE_PICKLE", raising=False)
    monkeypatch.delenv("ATASKS_CODEC", raising=False)


@pytest.fixture
def closed_url() -> str:
    """An AMQP URL where nothing listens: whatever tries to connect there fails at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"amqp://guest:guest@127.0.0.1:{port}/"


def test_the_policy(unkeyed: None) -> None:
    signed, bare = PickleCodec(None, key="k"), PickleCodec(None)
    assert not bare.signed
    assert unsigned.refused(bare, in_process=False, insecure_pickle=False)
    assert not unsigned.refused(bare, in_process=True, insecure_pickle=False)
    assert not unsigned.refused(bare, in_process=False, insecure_pickle=True)
    assert not unsigned.refused(signed, in_process=False, insecure_pickle=False)
    assert not unsigned.refused(JSONCodec(None), in_process=False, insecure_pickle=False)
    assert not unsigned.refused(None, in_process=False, insecure_pickle=False)


async def test_setup_refuses_unsigned_pickle_over_a_broker_before_connecting(
    unkeyed: None, closed_url: str
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        await atasks.setup("amqp", url=closed_url, namespace="fail-closed", serve=True)
    message = str(caught.value)
    assert "unsigned pickle" in message
    for way in WAYS_OUT:
        assert way in message, way
    # All or nothing: nothing is left bound (and nothing tried the closed port: no
    # connection error came first).
    assert namespace("fail-closed").codec is None
    assert namespace("fail-closed").transport is None


async def test_setup_refuses_a_hand_made_unsigned_codec_and_transport_too(
    unkeyed: None, closed_url: str
) -> None:
    from atasks.transport.backends.amqp import AMQPTransport

    transport = AMQPTransport(closed_url, namespace=None)
    with pytest.raises(ConfigurationError, match="unsigned pickle"):
        await atasks.setup(transport, codec=PickleCodec("fail-closed"), namespace="fail-closed")


@pytest.mark.parametrize(
    "way",
    ["key", "env key", "json", "insecure_pickle", "ATASKS_INSECURE_PICKLE", "ATASKS_CODEC"],
)
async def test_each_way_out_gets_past_the_check(
    unkeyed: None, closed_url: str, monkeypatch: pytest.MonkeyPatch, way: str
) -> None:
    given: dict[str, object] = {}
    if way == "key":
        given["key"] = "k"
    elif way == "env key":
        monkeypatch.setenv("ATASKS_SECRET", "k")
    elif way == "json":
        given["codec"] = "json"
    elif way == "insecure_pickle":
        given["insecure_pickle"] = True
    elif way == "ATASKS_INSECURE_PICKLE":
        monkeypatch.setenv("ATASKS_INSECURE_PICKLE", "1")
    else:
        monkeypatch.setenv("ATASKS_CODEC", "json")
    # Past the check, setup() tries the broker, which is not there.
    with pytest.raises(atasks.errors.TransportError):
        await atasks.setup(
            "amqp", url=closed_url, namespace="fail-closed", connect_timeout=2, **given
        )


async def test_loopback_needs_no_key(unkeyed: None) -> None:
    await atasks.setup("loopback", namespace="fail-closed")
    assert await double(21) == 42


async def test_the_opt_in_works_over_a_broker_and_still_warns(
    unkeyed: None, amqp_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("atasks.router._unsigned_pickle_warned", False)
    await atasks.setup(
        "amqp", url=amqp_url, namespace="fail-closed", serve=True, insecure_pickle=True
    )
    assert await double(4) == 8
    assert "serving unsigned pickle" in caplog.text


def test_atasks_run_refuses_unsigned_pickle_over_a_broker(unkeyed: None, closed_url: str) -> None:
    done = atasks_run(
        "examples/scenarios.py", "--mode", "client", "--transport", "amqp", "--url", closed_url
    )
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert "unsigned pickle" in last
    for way in ("ATASKS_SECRET", "--codec json", "--insecure-pickle", "ATASKS_INSECURE_PICKLE=1"):
        assert way in last, way


@pytest.mark.parametrize(
    ("flags", "env"),
    [
        (("--insecure-pickle",), {}),
        ((), {"ATASKS_INSECURE_PICKLE": "1"}),
        (("--codec", "json"), {}),
        ((), {"ATASKS_SECRET": "k"}),
    ],
)
def test_atasks_run_gets_past_the_check_each_way_out(
    unkeyed: None, closed_url: str, flags: tuple[str, ...], env: dict[str, str]
) -> None:
    done = atasks_run(
        "examples/scenarios.py",
        *("--mode", "client", "--transport", "amqp", "--url", closed_url),
        *("--connect-timeout", "2", *flags),
        env=env,
    )
    assert done.returncode == 1  # the broker is not there…
    assert "unsigned pickle" not in done.stderr  # …but the check passed
    assert "127.0.0.1" in done.stderr.strip().splitlines()[-1]
