"""The single owner of global state: per namespace, one codec, one transport, one router and the
atasks registered in it.

Constructing a codec or transport with a ``namespace`` records it here and does nothing else (no
I/O, no event loop). Binding a *different* object to an occupied slot is an error naming both;
binding an equal codec again is a no-op. ``reset()`` forgets bindings so tests can start clean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from atasks.errors import (
    ConfigurationError,
    DuplicateATask,
    NoClientTransportRegistered,
    NoCodecRegistered,
)

if TYPE_CHECKING:
    from atasks.codecs.base import Codec
    from atasks.router import Router
    from atasks.tasks import ATask
    from atasks.transport.base import Transport

DEFAULT = "default"


@dataclass
class Namespace:
    """What one namespace is made of."""

    name: str
    codec: Codec | None = None
    transport: Transport | None = None
    router: Router | None = None
    atasks: dict[str, ATask[Any, Any]] = field(default_factory=dict)


_namespaces: dict[str, Namespace] = {}


def namespace(name: str = DEFAULT) -> Namespace:
    """The namespace called ``name``, created empty on first use."""
    ns = _namespaces.get(name)
    if ns is None:
        ns = _namespaces[name] = Namespace(name)
    return ns


def namespaces() -> list[Namespace]:
    """Every namespace used so far."""
    return list(_namespaces.values())


def bind_codec(codec: Codec, name: str) -> None:
    ns = namespace(name)
    if ns.codec is not None and ns.codec is not codec and ns.codec != codec:
        raise ConfigurationError(
            f"namespace {name!r} already has codec {ns.codec!r}; cannot also bind {codec!r}. "
            "Use another namespace, or atasks.reset() first."
        )
    if ns.codec is None:
        ns.codec = codec


def bind_transport(transport: Transport, name: str) -> None:
    ns = namespace(name)
    if ns.transport is not None and ns.transport is not transport:
        raise ConfigurationError(
            f"namespace {name!r} already has transport {ns.transport!r}; cannot also bind "
            f"{transport!r}. Use another namespace, or await atasks.close() first."
        )
    ns.transport = transport


def bind_router(router: Router, name: str) -> None:
    ns = namespace(name)
    if ns.router is not None and ns.router is not router:
        raise ConfigurationError(
            f"namespace {name!r} already has router {ns.router!r}; cannot also bind {router!r}."
        )
    ns.router = router


def register_atask(atask: ATask[Any, Any]) -> None:
    ns = namespace(atask.namespace)
    known = ns.atasks.get(atask.name)
    if known is not None and not known.same_function(atask):
        raise DuplicateATask(
            f"atask name {atask.name!r} in namespace {atask.namespace!r} is taken by "
            f"{known.describe()}; cannot also register {atask.describe()}. "
            "Give one of them another name with @atask(name=...)."
        )
    ns.atasks[atask.name] = atask


def get_codec(namespace_name: str = DEFAULT) -> Codec:
    """The codec bound to a namespace."""
    codec = namespace(namespace_name).codec
    if codec is None:
        raise NoCodecRegistered(
            f"namespace {namespace_name!r} has no codec: construct one, e.g. "
            f"PickleCodec(namespace={namespace_name!r}), or call atasks.setup()."
        )
    return codec


def get_transport(namespace_name: str = DEFAULT) -> Transport:
    """The transport bound to a namespace."""
    transport = namespace(namespace_name).transport
    if transport is None:
        raise NoClientTransportRegistered(
            f"namespace {namespace_name!r} has no transport to send atasks through: construct "
            f"one, e.g. LoopbackTransport(namespace={namespace_name!r}) and await its connect(), "
            "or call atasks.setup()."
        )
    return transport


def reset(namespace_name: str | None = None) -> None:
    """Forget the codec, transport and router of one namespace (or all); atasks stay registered.

    This does no I/O: await ``atasks.close()`` first to stop serving and disconnect.
    """
    targets = namespaces() if namespace_name is None else [namespace(namespace_name)]
    for ns in targets:
        ns.codec = ns.transport = ns.router = None
