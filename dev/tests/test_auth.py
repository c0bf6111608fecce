"""``async with atasks.auth(claims)``: claims travel signed, are verified before anything is
decoded, and fail closed — forged, altered, moved, expired or missing snapshots, and sides
without a key. Over loopback, a broker, and server processes."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import workload
from servers import Servers, wait_until_served
from workload import protected, whoami, whoami_nested

import atasks
from atasks import atask
from atasks.auth_context import HEADER, key_for, make_context, sign
from atasks.errors import AuthError, AuthUnavailable
from atasks.events import ProgressListener
from atasks.router import Router
from atasks.transport.base import Reply, Request, RequestHandler, Transport

KEY = "the test suite's key"
ANN = {"user": "ann", "roles": ["admin"]}
BOB = {"user": "bob", "roles": []}


@atask(auth_required=lambda claims: "admin" in claims["roles"])
async def admins_only() -> str:
    return "admin"


async def _is_ann(claims: Any) -> bool:
    return bool(claims["user"] == "ann")


@atask(auth_required=_is_ann)
async def ann_only() -> str:
    return "ann"


class Tamper(Transport):
    """Sends through ``inner`` after ``change(request)``: what an attacker on the broker does."""

    classic = False

    def __init__(self, inner: Transport, change: Callable[[Request], None]) -> None:
        super().__init__(namespace="default")  # the namespace's transport for calls from now
        self.inner = inner
        self.change = change
        self.messaging_system = inner.messaging_system  # type: ignore[misc]

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def send_request(
        self, request: Request, on_progress: ProgressListener | None = None
    ) -> Reply:
        self.change(request)
        return await self.inner.send_request(request, on_progress)

    async def register_callback(self, name: str, handler: RequestHandler) -> None:
        await self.inner.register_callback(name, handler)

    async def unregister_callback(self, name: str) -> None:
        await self.inner.unregister_callback(name)

    async def drain(self, grace: float) -> None:
        await self.inner.drain(grace)


@pytest.fixture
async def secured(
    request: pytest.FixtureRequest, transport_kind: str, monkeypatch: pytest.MonkeyPatch
) -> Router:
    """Like ``served``, every side with ``ATASKS_SECRET`` (which signs pickle too)."""
    monkeypatch.setenv("ATASKS_SECRET", KEY)
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    return await atasks.setup(transport_kind, url=url, serve=True)


def set_snapshot(request: Request, snapshot: str) -> None:
    request.headers = {**request.headers, HEADER: snapshot}


def tamper(change: Callable[[Request], None]) -> None:
    Tamper(atasks.get_transport(), change)


def resign(claims: dict[str, Any], *, key: bytes | None = None, expires: float | None = None):
    """A change that replaces the snapshot with one of ``claims`` signed with ``key``."""

    def change(request: Request) -> None:
        context = make_context(claims, expires=expires)
        signing = key if key is not None else key_for(atasks.get_codec())
        assert signing is not None
        set_snapshot(request, sign(context.token, signing, request))

    return change


def alter(request: Request, field: str, value: object) -> None:
    """Change one field of the snapshot's claims, keeping its signature."""
    version, encoded, mac = request.headers[HEADER].split(".")
    data = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    data[field] = value
    altered = base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()
    set_snapshot(request, f"{version}.{altered}.{mac}")


async def test_claims_reach_the_atask_and_the_atasks_it_awaits(secured: Router) -> None:
    assert atasks.current_auth() is None
    async with atasks.auth(ANN) as claims:
        assert claims == ANN
        assert atasks.current_auth() == ANN
        assert await whoami() == ANN
        assert await whoami_nested() == [ANN, ANN]
        assert await protected() == "for authenticated callers"
    assert await whoami() is None


async def test_claims_are_read_only_and_frozen_when_entered(secured: Router) -> None:
    source = {"user": "ann", "roles": ["admin"]}
    async with atasks.auth(source) as claims:
        source["user"] = "mallory"
        with pytest.raises(TypeError):
            claims["user"] = "mallory"  # type: ignore[index]
        assert await whoami() == ANN


async def test_a_protected_atask_refuses_a_call_without_auth(secured: Router) -> None:
    with pytest.raises(AuthError, match=r"requires an auth context, and call \w+ carries none"):
        await protected()


async def test_a_check_decides_on_the_verified_claims(secured: Router) -> None:
    async with atasks.auth(ANN):
        assert await admins_only() == "admin"
        assert await ann_only() == "ann"
    async with atasks.auth(BOB):
        with pytest.raises(AuthError, match="check <lambda> denies"):
            await admins_only()
        with pytest.raises(AuthError, match="check _is_ann denies"):
            await ann_only()
    with pytest.raises(AuthError, match="carries none"):
        await admins_only()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (resign(ANN, key=b"another key"), "wrong signature"),
        (lambda r: alter(r, "claims", {"user": "mallory", "roles": ["admin"]}), "wrong signature"),
        (lambda r: alter(r, "exp", time.time() + 3600), "wrong signature"),
        (lambda r: set_snapshot(r, "v1.e30.AAAA"), "wrong signature"),
        (lambda r: set_snapshot(r, "garbage"), "malformed"),
        (lambda r: setattr(r, "body", r.body + b"x"), "wrong signature"),  # other arguments
        (resign(ANN, expires=time.time() - 5), "expired"),
    ],
    ids=[
        "other-key",
        "claims-altered",
        "expiry-extended",
        "made-up",
        "garbage",
        "body-changed",
        "expired",
    ],
)
async def test_a_forged_altered_or_expired_snapshot_is_refused(
    secured: Router, change: Callable[[Request], None], message: str
) -> None:
    tamper(change)
    async with atasks.auth(ANN):
        with pytest.raises(AuthError, match=message):
            await whoami()  # an atask that does not require auth: a snapshot is always checked


async def test_a_snapshot_moved_to_another_call_is_refused(secured: Router) -> None:
    captured: list[str] = []

    def replay(request: Request) -> None:
        if captured:
            set_snapshot(request, captured[0])  # signed for the first call
        else:
            captured.append(request.headers[HEADER])

    tamper(replay)
    async with atasks.auth(ANN):
        assert await whoami() == ANN
    async with atasks.auth(ANN):
        with pytest.raises(AuthError, match="made for another call"):
            await whoami()


async def test_the_snapshot_is_checked_before_the_arguments_are_decoded(secured: Router) -> None:
    def forge(request: Request) -> None:
        request.body = b"not a pickle at all"
        set_snapshot(request, "v1.e30.AAAA")

    tamper(forge)
    async with atasks.auth(ANN):
        with pytest.raises(AuthError, match="wrong signature"):
            await whoami()


async def test_expired_claims_fail_where_the_call_is_made(secured: Router) -> None:
    async with atasks.auth(ANN, expires=time.time() - 1):
        with pytest.raises(AuthError, match=r"expired [\d.]+s ago: atask .* was not called"):
            await whoami()


async def test_without_a_key_nothing_is_signed_or_trusted(
    unsigned_pickle: None, served: Router
) -> None:
    async with atasks.auth(ANN):
        with pytest.raises(AuthUnavailable, match="no key to sign"):
            await whoami()
    tamper(resign(ANN, key=b"an attacker's key"))  # a snapshot this server cannot check
    with pytest.raises(AuthUnavailable, match="no key to verify it"):
        await whoami()


async def test_the_pickle_key_signs_auth_when_there_is_no_secret() -> None:
    await atasks.setup(key="a pickle key")
    async with atasks.auth(BOB):
        assert await whoami() == BOB


async def test_a_server_never_lends_its_own_auth_context_to_a_call(
    request: pytest.FixtureRequest, transport_kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over AMQP a served call runs in a context copied from whoever connected: connecting
    inside `auth()` must not make every call without a snapshot run as that user."""
    monkeypatch.setenv("ATASKS_SECRET", KEY)
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    async with atasks.auth(ANN):
        await atasks.setup(transport_kind, url=url, serve=True)
    assert await whoami() is None
    assert await whoami_nested() == [None, None]
    async with atasks.auth(BOB):
        assert await whoami_nested() == [BOB, BOB]


def test_claims_must_be_small_json() -> None:
    with pytest.raises(TypeError, match="must be JSON"):
        make_context({"when": object()})
    with pytest.raises(TypeError, match="str keys"):
        make_context({1: "x"})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="over 8192"):
        make_context({"blob": "x" * 9000})
    with pytest.raises(ValueError, match="positive"):
        make_context(ANN, ttl=0)
    with pytest.raises(TypeError, match="not both"):
        make_context(ANN, ttl=1, expires=time.time())


def test_auth_required_takes_a_bool_or_a_check() -> None:
    with pytest.raises(TypeError, match="auth_required takes"):
        atask(auth_required="yes")(whoami.fn)  # type: ignore[call-overload]


async def test_auth_travels_to_server_processes(
    servers: Servers, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATASKS_SECRET", KEY)
    servers.start()
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    with pytest.raises(AuthError, match="carries none"):
        await workload.protected()
    async with atasks.auth(ANN):
        assert await workload.whoami_nested() == [ANN, ANN]
        assert await workload.protected() == "for authenticated callers"
    tamper(resign(BOB, key=b"not the servers' key"))
    async with atasks.auth(BOB):
        with pytest.raises(AuthError, match="wrong signature"):
            await workload.protected()


async def test_a_server_without_the_key_refuses_with_a_retryable_error(
    servers: Servers, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers.start("--codec", "json", env={"ATASKS_SECRET": None})
    monkeypatch.setenv("ATASKS_SECRET", KEY)
    await atasks.setup("amqp", url=amqp_url, codec="json")
    await wait_until_served(workload.ready)
    async with atasks.auth(ANN):
        with pytest.raises(AuthUnavailable, match="no key to verify it"):
            await workload.whoami()
