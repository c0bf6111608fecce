"""Fail closed: over a broker, unsigned pickle is refused unless asked for by name.

Pure: ``check()`` looks at a codec and where its messages go, and raises or not. ``setup()`` and
``atasks run`` call it; the 2019 set-up (a ``PickleCodec()`` and an ``AMQPTransport()`` made by
hand, then ``router.activate``) does not, and keeps its warning at start.
"""

from __future__ import annotations

from atasks.codecs.base import Codec
from atasks.codecs.pickle_codec import PickleCodec
from atasks.errors import ConfigurationError

SETUP_WAYS = (
    "set ATASKS_SECRET (or key=...) to the same key on every client and server, "
    'use codec="json" (ATASKS_CODEC=json), '
    "or accept the risk with insecure_pickle=True (ATASKS_INSECURE_PICKLE=1)"
)
RUN_WAYS = (
    "set ATASKS_SECRET to the same key on every client and server, "
    "use --codec json (ATASKS_CODEC=json), "
    "or accept the risk with --insecure-pickle (ATASKS_INSECURE_PICKLE=1)"
)


def refused(codec: Codec | None, *, in_process: bool, insecure_pickle: bool) -> bool:
    """Whether ``codec`` must be refused: unsigned pickle leaving the process, not opted in."""
    return (
        isinstance(codec, PickleCodec)
        and not codec.signed
        and not in_process
        and not insecure_pickle
    )


def check(
    codec: Codec | None,
    *,
    in_process: bool,
    insecure_pickle: bool,
    namespace: str,
    ways: str = SETUP_WAYS,
) -> None:
    """``ConfigurationError`` naming the ways out if ``codec`` is refused (see ``refused``)."""
    if refused(codec, in_process=in_process, insecure_pickle=insecure_pickle):
        raise ConfigurationError(
            f"namespace {namespace!r}: unsigned pickle over a broker lets anyone who can publish "
            f"to it run code in your processes; refused. To go on: {ways}"
        )
