"""One-call set-up and tear-down of a namespace."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterable, Sequence
from typing import Any

from atasks import settings, unsigned
from atasks.codecs import CODECS, Codec
from atasks.errors import ConfigurationError
from atasks.middleware import Middleware
from atasks.namespaces import DEFAULT, namespaces, reset
from atasks.namespaces import namespace as _namespace
from atasks.router import Router, get_router
from atasks.settings import DEFAULT_GRACE
from atasks.transport.contract import Transport
from atasks.transport.loopback import LoopbackTransport


def make_transport(kind: str, *, namespace: str, **options: Any) -> Transport:
    """A transport by name: ``loopback`` or ``amqp``. ``options`` go to ``AMQPTransport``; those
    not given (or ``None``) come from their ``ATASKS_*`` variables where set."""
    if kind == "loopback":
        return LoopbackTransport(namespace=namespace)
    if kind == "amqp":
        from atasks.transport.backends.amqp import AMQPTransport

        return AMQPTransport(namespace=namespace, **options)
    raise ConfigurationError(f"unknown transport {kind!r}: use 'loopback' or 'amqp'")


def make_codec(
    kind: str, *, namespace: str, key: str | bytes | Sequence[str | bytes] | None = None
) -> Codec:
    """A codec by name: ``pickle`` or ``json``."""
    if kind not in CODECS:
        raise ConfigurationError(f"unknown codec {kind!r}: use one of {', '.join(CODECS)}")
    if kind == "pickle":
        from atasks.codecs import PickleCodec

        return PickleCodec(namespace, key=key)
    if key is not None:
        raise ConfigurationError(f"codec {kind!r} takes no key")
    return CODECS[kind](namespace=namespace)


def make_middleware(given: Middleware | str) -> Middleware:
    """``given``, or the middleware ``"module:Class"`` names, made with no arguments."""
    if not isinstance(given, str):
        return given
    module, _, name = given.partition(":")
    try:
        made = getattr(importlib.import_module(module), name)()
    except (ImportError, AttributeError, TypeError) as exc:
        raise ConfigurationError(f"middleware {given!r}: {exc}") from exc
    if not isinstance(made, Middleware):
        raise ConfigurationError(f"middleware {given!r} is not an atasks.Middleware")
    return made


def configured_middlewares(given: Iterable[Middleware | str] | None = None) -> list[Middleware]:
    """The middlewares ``given``, else those ``ATASKS_MIDDLEWARE`` names, each made as
    ``make_middleware`` makes it, outermost first: what ``setup()`` and ``atasks run`` add."""
    return [make_middleware(one) for one in settings.value("middleware", given) or ()]


async def setup(
    transport: str | Transport | None = None,
    *,
    url: str | None = None,
    codec: str | Codec | None = None,
    key: str | bytes | Sequence[str | bytes] | None = None,
    insecure_pickle: bool | None = None,
    serve: bool | None = None,
    concurrency: int | None = None,
    processes: int | None = None,
    namespace: str = DEFAULT,
    middleware: Iterable[Middleware | str] | None = None,
    **transport_options: Any,
) -> Router:
    """Bind a codec and a transport to ``namespace``, connect, and serve if asked.

    Each setting not given comes from its ``ATASKS_*`` variable, else its default (see
    ``atasks.settings``): ``transport`` ``"loopback"``, ``codec`` ``"pickle"``, ``key``
    ``ATASKS_SECRET``, ``insecure_pickle`` off, ``concurrency`` 64, ``processes`` (workers for
    ``mechanism="process"`` atasks) one per CPU, and ``AMQPTransport``'s options. ``serve``
    defaults to ``True`` for the loopback transport (it reaches only this process) and
    ``False`` otherwise. ``middleware`` (``atasks.Middleware`` objects, or ``"module:Class"``
    made with no arguments; outermost first) are added to the namespace's router, after any it
    has. Returns the namespace's router.

    Fails closed: unsigned pickle over a broker is a ``ConfigurationError`` unless
    ``insecure_pickle`` (a key, or ``codec="json"``, is the safe way out).

    All or nothing: if any step fails, the namespace keeps the codec and transport it had, and
    a transport made here is disconnected.
    """
    transport = settings.value("transport", transport) or "loopback"
    codec = settings.value("codec", codec)
    concurrency = settings.value("concurrency", concurrency)
    processes = settings.value("processes", processes)
    serve = settings.value("serve", serve)
    insecure_pickle = settings.value("insecure_pickle", insecure_pickle)
    middlewares = configured_middlewares(middleware)
    ns = _namespace(namespace)
    before = (ns.codec, ns.transport, list(ns.replaced))
    made: Transport | None = None
    try:
        if isinstance(codec, str):
            make_codec(codec, namespace=namespace, key=key)
        if isinstance(transport, str):
            serve = transport == "loopback" if serve is None else serve
            transport = made = make_transport(
                transport, namespace=namespace, url=url, **transport_options
            )
        unsigned.check(
            ns.codec,
            in_process=transport.in_process,
            insecure_pickle=insecure_pickle,
            namespace=namespace,
        )
        await transport.connect()
        router = get_router(namespace)
        for one in middlewares:
            router.add_middleware(one)
        if serve:
            await router.activate(transport, concurrency=concurrency, processes=processes)
    except BaseException:
        ns.codec, ns.transport, ns.replaced[:] = before
        if made is not None:
            with contextlib.suppress(Exception):
                await made.disconnect()
        raise
    return router


async def close(namespace_name: str | None = None, *, grace: float = DEFAULT_GRACE) -> None:
    """Stop serving, disconnect and forget the codec, transport and router of one namespace
    (or every namespace). Registered atasks stay registered. Idempotent."""
    targets = namespaces() if namespace_name is None else [_namespace(namespace_name)]
    for ns in targets:
        transports = [ns.transport, *ns.replaced]
        try:
            if ns.router is not None:
                transports.append(ns.router.serving)
                await ns.router.deactivate(grace)
        finally:
            try:
                await _disconnect_all(transports)
            finally:
                reset(ns.name)


async def _disconnect_all(transports: list[Transport | None]) -> None:
    """Disconnect each transport once, all of them even if one fails (its error is raised)."""
    done: list[Transport] = []
    failure: BaseException | None = None
    for transport in transports:
        if transport is None or any(transport is seen for seen in done):
            continue
        done.append(transport)
        try:
            with contextlib.suppress(NotImplementedError):  # a 2019 transport: nothing to do
                await transport.disconnect()
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
