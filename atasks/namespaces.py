"""The single owner of global state: per namespace, one codec, one transport, one router and the
atasks registered in it.

Constructing a codec or transport with a ``namespace`` records it here once the object is fully
built (``atasks.binding``, whose installer this module is), and does nothing else: no I/O, no
event loop. As in the 2019
design, the newest codec or transport of a namespace is the one installed; replacing a different
one logs a WARNING naming both. A router already serving keeps the transport it was activated
with until it is deactivated. ``reset()`` forgets bindings so tests can start clean.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from atasks import binding
from atasks.errors import (
    ConfigurationError,
    DuplicateATask,
    DuplicateScheduleError,
    NoClientTransportRegistered,
    NoCodecRegistered,
)
from atasks.settings import DEFAULT_NAMESPACE

if TYPE_CHECKING:  # the contracts below this registry; what is above it, it knows as protocols
    from atasks.codecs.base import Codec
    from atasks.transport.contract import Transport

log = logging.getLogger("atasks.namespaces")

DEFAULT = DEFAULT_NAMESPACE


class Registered(Protocol):
    """An atask as this registry knows it."""

    name: str
    namespace: str

    def same_function(self, other: Any) -> bool: ...

    def describe(self) -> str: ...


class ScheduleEntry(Protocol):
    """A schedule as this registry knows it."""

    @property
    def name(self) -> str: ...

    @property
    def atask(self) -> Registered: ...

    @property
    def spec(self) -> str: ...

    @property
    def jitter(self) -> Any: ...

    @property
    def missed(self) -> str: ...


class Bound(Protocol):
    """A router as this registry knows it."""

    namespace: str


@dataclass
class Namespace:
    """What one namespace is made of."""

    name: str
    codec: Codec | None = None
    transport: Transport | None = None
    router: Any = None
    """The namespace's ``atasks.router.Router``, once made."""
    atasks: dict[str, Any] = field(default_factory=dict)
    """Its ``atasks.tasks.ATask`` objects by name."""
    replaced: list[Transport] = field(default_factory=list)
    """Transports that a newer one replaced: ``atasks.close()`` disconnects them too."""
    on_atask: list[Callable[[Any], None]] = field(default_factory=list)
    """Called with each atask registered from now on (a serving router starts serving it)."""
    schedules: dict[str, Any] = field(default_factory=dict)
    """Its ``atasks.schedules.Schedule`` objects by name."""


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
    """Install ``codec`` in namespace ``name``, replacing (and naming, if different) the old."""
    ns = namespace(name)
    old = ns.codec
    if old is not None and old is not codec and old != codec:
        log.warning("namespace %r: codec %r replaced by %r", name, old, codec)
    ns.codec = codec


def _install(constructed: Any) -> None:
    """Install a codec or transport just constructed with a namespace (``binding``)."""
    name = constructed.namespace
    if name is None:
        return
    if constructed.installs_as == "codec":
        bind_codec(constructed, name)
    else:
        bind_transport(constructed, name)


binding.install_with(_install)


def bind_transport(transport: Transport, name: str) -> None:
    """Install ``transport`` in namespace ``name``; the one it replaces is kept for ``close()``.

    A router serving through the old transport goes on with it until it is deactivated.
    """
    ns = namespace(name)
    old = ns.transport
    if old is not None and old is not transport:
        log.warning("namespace %r: transport %r replaced by %r", name, old, transport)
        ns.replaced.append(old)
    if transport in ns.replaced:
        ns.replaced.remove(transport)
    ns.transport = transport


def bind_router(router: Bound, name: str) -> Namespace:
    """Make ``router`` the router of namespace ``name``, and return that namespace."""
    ns = namespace(name)
    if ns.router is not None and ns.router is not router:
        raise ConfigurationError(
            f"namespace {name!r} already has router {ns.router!r}; cannot also bind {router!r}."
        )
    ns.router = router
    return ns


def register_atask(atask: Registered) -> Namespace:
    """Register ``atask`` in its namespace, and return that namespace."""
    ns = namespace(atask.namespace)
    known = ns.atasks.get(atask.name)
    if known is not None and not known.same_function(atask):
        raise DuplicateATask(
            f"atask name {atask.name!r} in namespace {atask.namespace!r} is taken by "
            f"{known.describe()}; cannot also register {atask.describe()}. "
            "Give one of them another name with @atask(name=...)."
        )
    ns.atasks[atask.name] = atask
    for listener in list(ns.on_atask):
        listener(atask)
    return ns


def register_schedule(schedule: ScheduleEntry) -> None:
    """Register ``schedule`` in its atask's namespace; the same one again (a second import of
    its module) replaces it, a different one under the same name is an error."""
    ns = namespace(schedule.atask.namespace)
    known = ns.schedules.get(schedule.name)
    if known is not None and not (
        known.atask.same_function(schedule.atask)
        and (known.spec, known.jitter, known.missed)
        == (schedule.spec, schedule.jitter, schedule.missed)
    ):
        raise DuplicateScheduleError(
            f"schedule name {schedule.name!r} in namespace {ns.name!r} is taken by "
            f"{known.atask.describe()} ({known.spec}); cannot also register "
            f"{schedule.atask.describe()} ({schedule.spec}). Name one with @schedule(name=...)."
        )
    ns.schedules[schedule.name] = schedule


def _set_up_hint(namespace_name: str) -> str:
    where = "" if namespace_name == DEFAULT else f", namespace={namespace_name!r}"
    return (
        f"await atasks.setup({where.removeprefix(', ')}) before calling its atasks (loopback: "
        f'this process serves them), or atasks.setup("amqp"{where}) to call servers through '
        "RabbitMQ"
    )


def get_codec(namespace_name: str = DEFAULT) -> Codec:
    """The codec installed in a namespace."""
    ns = _namespaces.get(namespace_name)  # looking up creates nothing
    if ns is None or ns.codec is None:
        raise NoCodecRegistered(
            f"namespace {namespace_name!r} is not set up (it has no codec): "
            f"{_set_up_hint(namespace_name)}; or, with the 2019 API, construct a codec, e.g. "
            f"PickleCodec({namespace_name!r})."
        )
    return ns.codec


def get_transport(namespace_name: str = DEFAULT) -> Transport:
    """The transport installed in a namespace."""
    ns = _namespaces.get(namespace_name)
    if ns is None or ns.transport is None:
        raise NoClientTransportRegistered(
            f"namespace {namespace_name!r} has no transport to send atasks through: "
            f"{_set_up_hint(namespace_name)}; or, with the 2019 API, construct one, e.g. "
            f"LoopbackTransport({namespace_name!r}), and await its connect()."
        )
    return ns.transport


def reset(namespace_name: str | None = None) -> None:
    """Forget the codec, transport and router of one namespace (or all); atasks stay registered.

    This does no I/O: await ``atasks.close()`` first to stop serving and disconnect.
    """
    if namespace_name is None:
        targets = namespaces()
    else:
        found = _namespaces.get(namespace_name)
        targets = [found] if found is not None else []
    for ns in targets:
        ns.codec = ns.transport = ns.router = None
        ns.replaced.clear()
