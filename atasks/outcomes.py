"""Outcomes that travel: an exception made into a failed ``Reply`` on the serving side, and
rebuilt from one on the calling side, as close to the original as that side can get."""

from __future__ import annotations

import builtins
import contextlib
import logging
import traceback

from atasks import errors
from atasks.codecs.base import Codec, decode, encode
from atasks.errors import CodecError, DecodeError, RemoteError, type_name
from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.router")

MESSAGE_LIMIT = 2_000
TRACEBACK_LIMIT = 16_000


def describe(exc: BaseException) -> str:
    """``module.Type: message`` of ``exc``, as events and logs show it."""
    return f"{type_name(exc)}: {message(exc)[:MESSAGE_LIMIT]}"


def message(exc: BaseException) -> str:
    """``str(exc)``, or a placeholder when its ``__str__`` fails."""
    try:
        return str(exc)
    except Exception:  # a broken __str__ must not break the reply
        return f"<unprintable {type(exc).__name__}>"


async def failure(request: Request, codec: Codec | None, exc: Exception) -> Reply:
    """The failed reply to ``request``: the exception encoded where it can travel, and always
    its type, message and traceback as text."""
    text = message(exc)
    body = b""
    if codec is not None and request.content_type == codec.content_type:
        try:
            body = await encode(codec, exc)
            await decode(codec, body)  # some exceptions pickle but fail to unpickle
        except CodecError:
            body = b""
    log.debug("atask %r failed: %s: %s", request.name, type_name(exc), text)
    return Reply(
        call_id=request.call_id,
        ok=False,
        content_type=codec.content_type if codec is not None else "",
        body=body,
        error_type=type_name(exc),
        error_message=text[:MESSAGE_LIMIT],
        traceback="".join(traceback.format_exception(exc))[-TRACEBACK_LIMIT:],
    )


async def rebuild_exception(reply: Reply, codec: Codec) -> BaseException:
    """The exception a failed reply describes, as close to the original as this side can get."""
    exc: BaseException | None = None
    if reply.body and reply.content_type == codec.content_type:
        try:
            decoded = await decode(codec, reply.body)
        except DecodeError:
            decoded = None
        if isinstance(decoded, BaseException):
            exc = decoded
    if exc is None:
        exc = exception_from_name(reply.error_type, reply.error_message, reply.traceback)
    if reply.traceback:
        remote = reply.traceback.rstrip("\n")
        exc.add_note(f"Remote traceback, from the server that ran the atask:\n{remote}")
        with contextlib.suppress(AttributeError):  # exceptions with __slots__
            exc.remote_traceback = reply.traceback  # type: ignore[attr-defined]
    return exc


def exception_from_name(name: str, message: str, remote_traceback: str = "") -> BaseException:
    """Rebuild a builtin or atasks exception by name; anything else becomes ``RemoteError``."""
    module, _, qualname = name.rpartition(".")
    owner = {"builtins": builtins, "atasks.errors": errors}.get(module)
    cls = getattr(owner, qualname, None) if owner is not None else None
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not RemoteError:
        try:
            return cls(message)
        except Exception:
            pass
    return RemoteError(name, message, remote_traceback)
