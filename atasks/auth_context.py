"""Auth context that travels with calls as a signed snapshot, never as a bearer token.

``async with atasks.auth(claims):`` attaches ``claims`` (a small JSON object: user, scopes…) to
every call awaited inside. Each call carries a snapshot in its ``auth`` header: the claims and
their expiry, HMAC-SHA256-signed with the namespace's key together with the atask name, the
call id and the encoded arguments, so it cannot be altered, moved to another call or outlive
its expiry. A server verifies it before it decodes the arguments, and then
``atasks.current_auth()`` returns the claims inside the atask and in the calls it makes.

Fail closed: a snapshot that is present is always verified, and a call whose snapshot is
forged, altered or expired fails with ``AuthError``, as does a call without one to an atask
declared ``@atask(auth_required=True)`` (or whose check refuses the claims). A side without a
key fails the call with ``AuthUnavailable``.

The key: the namespace's signed ``PickleCodec`` key, else ``ATASKS_SECRET``; what signs is a key
derived from it, so a snapshot signature never doubles as a pickle signature. With several keys
(rotating: ``ATASKS_SECRET=new,old``) the first signs and a snapshot signed by any is accepted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import inspect
import json
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from atasks import keys
from atasks.errors import AuthError, AuthUnavailable

if TYPE_CHECKING:
    from atasks.codecs.base import Codec
    from atasks.transport.messages import Request

HEADER = "auth"
SECRET_ENV = keys.SECRET_ENV
TTL_ENV = "ATASKS_AUTH_TTL"
MAX_CLAIMS = 8192  # bytes of encoded claims: they travel in a header on every call
_VERSION = "v1"
_DOMAIN = b"atasks-auth/1\n"
_DERIVE = b"atasks auth snapshot key"

Claims = Mapping[str, Any]
AuthCheck = Callable[[Claims], bool | Awaitable[bool]]
"""An ``auth_required`` check: given the verified claims, true to let the call run."""


@dataclass(frozen=True, slots=True)
class AuthContext:
    """Claims in force, their expiry (``time.time()`` seconds) and ``token``, what is signed
    and travels: their JSON, base64url-encoded."""

    claims: Claims
    expires: float
    token: str


auth_var: ContextVar[AuthContext | None] = ContextVar("atasks_auth", default=None)
_derived: dict[bytes, bytes] = {}
_derived_keys: dict[Sequence[bytes], tuple[bytes, ...]] = {}
_verified: dict[str, AuthContext] = {}  # token → its context, once its signature checked out
VERIFIED_KEPT = 1024


def current_auth() -> Claims | None:
    """The claims of the auth context in force here (read-only), or ``None``.

    On a server, those the call arrived with, once verified.
    """
    context = auth_var.get()
    return context.claims if context is not None else None


@asynccontextmanager
async def auth(
    claims: Claims, *, ttl: float | None = None, expires: float | None = None
) -> AsyncIterator[Claims]:
    """Every atask awaited inside carries ``claims``, signed, until they expire.

    ``claims``: a JSON object of at most 8 KiB (who, which scopes — not a password or a token).
    They expire ``ttl`` seconds from now (default ``$ATASKS_AUTH_TTL``, else 300), or at
    ``expires`` (a ``time.time()``, e.g. the ``exp`` of the token they come from); a call
    made after that fails with ``AuthError``. Yields the claims, read-only.
    """
    context = make_context(claims, ttl=ttl, expires=expires)
    token = auth_var.set(context)
    try:
        yield context.claims
    finally:
        auth_var.reset(token)


def make_context(
    claims: Claims, *, ttl: float | None = None, expires: float | None = None
) -> AuthContext:
    if not isinstance(claims, Mapping) or not all(isinstance(key, str) for key in claims):
        raise TypeError("auth claims must be a mapping with str keys")
    if ttl is not None and expires is not None:
        raise TypeError("give ttl or expires, not both")
    if expires is None:
        seconds = default_ttl() if ttl is None else ttl
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"ttl must be a positive number of seconds, not {ttl!r}")
        expires = time.time() + seconds
    elif not math.isfinite(expires):
        raise ValueError(f"expires must be a time.time(), not {expires!r}")
    try:
        encoded = json.dumps(
            {"claims": dict(claims), "exp": expires},
            separators=(",", ":"),
            sort_keys=True,
            allow_nan=False,
        ).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"auth claims must be JSON: {exc}") from None
    if len(encoded) > MAX_CLAIMS:
        raise ValueError(
            f"auth claims are {len(encoded)} bytes encoded, over {MAX_CLAIMS}: they travel "
            "with every call; keep them to who and what, and look the rest up on the server"
        )
    frozen = MappingProxyType(json.loads(encoded)["claims"])
    return AuthContext(frozen, expires, _b64(encoded))


def default_ttl() -> float:
    from atasks.settings import value

    ttl: float = value("auth_ttl")
    return ttl


# --- keys, signing, verifying ----------------------------------------------------------------


def key_for(codec: Codec | None) -> bytes | None:
    """The key auth snapshots are signed with in a namespace whose codec is ``codec``."""
    found = keys_for(codec)
    return found[0] if found else None


def keys_for(codec: Codec | None) -> tuple[bytes, ...]:
    """The keys auth snapshots are verified with (the signing one first); ``()``: none."""
    signing = codec.signing_key() if codec is not None else None
    raw: Sequence[bytes]
    if signing is not None:
        # A codec that signs with one key of several (PickleCodec) says which verify.
        verifying = getattr(codec, "verifying_keys", None)
        raw = verifying() if callable(verifying) else (signing,)
    else:
        raw = keys.from_env() or ()
    found = _derived_keys.get(raw)  # once per set of keys: this runs on every call with auth
    if found is None:
        found = _derived_keys[raw] = tuple(_derive(key) for key in raw)
    return found


def _derive(raw: bytes) -> bytes:
    derived = _derived.get(raw)
    if derived is None:
        derived = _derived[raw] = hmac.digest(raw, _DERIVE, hashlib.sha256)
    return derived


def stamp(request: Request, codec: Codec, context: AuthContext) -> None:
    """Attach ``context``, signed, to ``request`` (the caller's side)."""
    now = time.time()
    if context.expires <= now:
        raise AuthError(
            f"the auth context expired {now - context.expires:.1f}s ago: atask "
            f"{request.name!r} was not called"
        )
    key = key_for(codec)
    if key is None:
        raise AuthUnavailable(
            f"no key to sign the auth context of a call of {request.name!r}: set "
            f"{SECRET_ENV} (the same on every client and server) or sign the namespace's "
            "pickle with PickleCodec(key=...)"
        )
    request.headers = {**request.headers, HEADER: sign(context.token, key, request)}


def sign(token: str, key: bytes, request: Request) -> str:
    """The snapshot of the claims ``token`` for ``request``: ``v1.<token>.<signature>``."""
    mac = hmac.digest(key, _message(token, request), hashlib.sha256)
    return f"{_VERSION}.{token}.{_b64(mac)}"


def verify(snapshot: str, keys: Sequence[bytes], request: Request) -> AuthContext:
    """The auth context ``snapshot`` carries for ``request``; ``AuthError`` unless it is
    well-formed, signed with one of ``keys`` for this very call, and unexpired."""
    where = f"call {request.call_id} of {request.name!r}"
    parts = snapshot.split(".")
    try:
        if len(parts) != 3 or parts[0] != _VERSION:
            raise ValueError("not v1.<claims>.<signature>")
        token, mac = parts[1], _unb64(parts[2])
    except (ValueError, binascii.Error):
        raise AuthError(f"the auth snapshot of {where} is malformed") from None
    message = _message(token, request)
    if (
        not hmac.compare_digest(mac, hmac.digest(keys[0], message, hashlib.sha256))
        and not any(  # the signing key first, without a generator: the common case
            hmac.compare_digest(mac, hmac.digest(key, message, hashlib.sha256)) for key in keys[1:]
        )
    ):
        raise AuthError(
            f"the auth snapshot of {where} has a wrong signature (forged, altered, made for "
            "another call, or signed with another key)"
        )
    context = _verified.get(token)
    if context is None:  # the claims, read once per token (a caller sends the same many times)
        try:
            data = json.loads(_unb64(token))
            expires, claims = float(data["exp"]), data["claims"]
            if not isinstance(claims, dict):
                raise TypeError("claims are not an object")
        except (ValueError, TypeError, KeyError, binascii.Error):  # signed: a key holder's bug
            raise AuthError(f"the auth snapshot of {where} is malformed") from None
        context = AuthContext(MappingProxyType(claims), expires, token)
        if len(_verified) >= VERIFIED_KEPT:
            _verified.clear()
        _verified[token] = context
    now = time.time()
    if context.expires <= now:
        raise AuthError(f"the auth context of {where} expired {now - context.expires:.1f}s ago")
    return context


async def admit(required: bool | AuthCheck, request: Request, codec: Codec) -> AuthContext | None:
    """The server's side: the verified auth context of ``request``, or ``None`` when it carries
    none and its atask does not require one (``required``, its ``auth_required``);
    ``AuthError`` otherwise (fail closed)."""
    snapshot = request.headers.get(HEADER)
    if snapshot is None:
        if required:
            raise AuthError(
                f"atask {request.name!r} requires an auth context, and call {request.call_id} "
                "carries none (await it inside `async with atasks.auth(claims)`)"
            )
        return None
    verifying = keys_for(codec)
    if not verifying:
        raise AuthUnavailable(
            f"call {request.call_id} of {request.name!r} carries an auth context, and this "
            f"server has no key to verify it (set {SECRET_ENV})"
        )
    context = verify(snapshot, verifying, request)
    if callable(required):
        verdict = required(context.claims)
        if inspect.isawaitable(verdict):
            verdict = await verdict
        if not verdict:
            check = getattr(required, "__qualname__", repr(required))
            raise AuthError(
                f"atask {request.name!r}'s check {check} denies the auth context of call "
                f"{request.call_id}"
            )
    return context


def enter(context: AuthContext) -> Any:
    """Put a verified context in force (the server, while the atask runs)."""
    return auth_var.set(context)


def leave(token: Any) -> None:
    auth_var.reset(token)


def _message(token: str, request: Request) -> bytes:
    # Each field after its length: none can be shifted into another.
    name, call_id = request.name, request.call_id
    fields = f"{len(name)}:{name},{len(call_id)}:{call_id},{len(token)}:{token},"
    return _DOMAIN + fields.encode() + request.body


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
