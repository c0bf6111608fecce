"""Context variables whose values travel with every call: ``atasks.propagate(var)``.

A marked variable's value, where it is set, goes with each call inside the call's payload —
encoded, and signed with a signing codec, with the arguments — and is set while the atask runs
on its server, so the atasks that one awaits carry it on. Unmarked variables never travel, and
neither does a marked one that has no value where the call is made.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any, TypeVar

from atasks.errors import ConfigurationError

log = logging.getLogger("atasks.propagation")

T = TypeVar("T")

propagated: dict[str, ContextVar[Any]] = {}
"""Wire name → marked variable. The router tests it for emptiness on every call: keep it this
very dict (mutated in place, never rebound)."""

_UNSET: Any = object()


def propagate(var: ContextVar[T], *, name: str | None = None) -> ContextVar[T]:
    """Send ``var``'s value with every call made where it is set, and set it on the server
    while the atask runs (and so in the calls that atask makes). Returns ``var``.

    Values travel under ``name`` (default ``var.name``), which clients and servers must agree
    on, and through the namespace's codec: with ``JSONCodec`` they must be JSON types. Marking
    the same variable again does nothing; another variable under a taken name is an error.
    """
    key = var.name if name is None else name
    if not key:
        raise ConfigurationError("atasks.propagate() needs a variable with a name, or name=...")
    known = propagated.get(key)
    if known is not None and known is not var:
        raise ConfigurationError(
            f"another context variable already travels as {key!r}; give this one another "
            "name with atasks.propagate(var, name=...)"
        )
    propagated[key] = var
    return var


def unpropagate(var: ContextVar[Any]) -> None:
    """Stop sending ``var`` with calls (and setting it from incoming ones)."""
    for key, known in list(propagated.items()):
        if known is var:
            del propagated[key]


def capture() -> dict[str, Any]:
    """The values of the marked variables that are set here, by wire name."""
    values = {}
    for key, var in propagated.items():
        value = var.get(_UNSET)
        if value is not _UNSET:
            values[key] = value
    return values


def apply(values: Mapping[str, Any]) -> list[tuple[ContextVar[Any], Token[Any]]]:
    """Set the marked variables from a call's ``values``; returns what ``restore`` undoes.

    A value for a name no variable is marked with here is ignored (logged at debug level).
    """
    tokens = []
    for key, value in values.items():
        var = propagated.get(key)
        if var is None:
            log.debug("ignored context value %r: no variable travels under that name here", key)
            continue
        tokens.append((var, var.set(value)))
    return tokens


def restore(tokens: list[tuple[ContextVar[Any], Token[Any]]]) -> None:
    for var, token in reversed(tokens):
        var.reset(token)
