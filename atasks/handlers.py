"""``@atasks.handler``: a class whose methods are atasks, served by one instance per process.

Callers call ``Mailer.send(x)`` (or ``Mailer().send(x)``); ``self`` never travels. Each server
process makes its instance at its first call, with the class's no-argument constructor or the
``factory`` given to the decorator, which is where dependencies are injected.
"""

from __future__ import annotations

import inspect
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar, overload

from atasks.tasks import ATask

T = TypeVar("T", bound=type)

_handlers: weakref.WeakSet[Handler] = weakref.WeakSet()

HANDLER_ATTRIBUTE = "__atasks_handler__"
"""Where ``@handler`` puts a class's ``Handler`` (in the class's own ``__dict__``)."""


class Handler:
    """How a handler class gets its one instance in this process."""

    def __init__(self, cls: type, factory: Callable[[], Any] | None) -> None:
        self.cls = cls
        self.factory: Callable[[], Any] = factory if factory is not None else cls
        self._instance: Any = None
        self._pid = 0
        # Thread-mechanism methods may ask for it first from several pool threads at once.
        self._lock = threading.Lock()
        _handlers.add(self)

    def instance(self) -> Any:
        """This process's instance, made at the first call (a forked process makes its own)."""
        pid = os.getpid()
        if self._pid != pid:
            with self._lock:
                if self._pid != pid:
                    made = self.factory()
                    if not isinstance(made, self.cls):
                        raise TypeError(
                            f"the factory of @atasks.handler {self.cls.__qualname__} returned "
                            f"{made!r}, not a {self.cls.__qualname__}"
                        )
                    self._instance, self._pid = made, pid
        return self._instance

    def forget(self) -> None:
        """Drop this process's instance: the next call makes a new one (for tests)."""
        with self._lock:
            self._instance, self._pid = None, 0

    def __repr__(self) -> str:
        return f"<atasks handler {self.cls.__module__}.{self.cls.__qualname__}>"


@overload
def handler(cls: T, /) -> T: ...


@overload
def handler(*, factory: Callable[[], Any]) -> Callable[[T], T]: ...


def handler(cls: Any = None, /, *, factory: Callable[[], Any] | None = None) -> Any:
    """Make a class's ``@atask`` methods callable as ``Class.method(...)``: each server process
    runs them on one instance, made with the no-argument constructor or with ``factory``
    (``@atasks.handler(factory=make_mailer)``). An atask's name is ``module.Class.method``."""
    if factory is not None and not callable(factory):
        raise TypeError(f"@atasks.handler(factory=...) takes a callable, not {factory!r}")

    def wrap(klass: Any) -> Any:
        if not isinstance(klass, type):
            raise TypeError(f"@atasks.handler decorates a class, not {klass!r}")
        methods = [
            value
            for value in vars(klass).values()
            if isinstance(value, ATask) and value.owner is klass
        ]
        if not methods:
            raise TypeError(
                f"@atasks.handler {klass.__qualname__} has no @atask method: decorate the "
                "methods its servers run with @atask"
            )
        if factory is None:
            _check_constructor(klass)
        made = Handler(klass, factory)
        setattr(klass, HANDLER_ATTRIBUTE, made)
        for method in methods:
            method.handler = made
        return klass

    return wrap(cls) if cls is not None else wrap


def handler_of(cls: type) -> Handler | None:
    """The ``Handler`` of a class decorated with ``@atasks.handler``, else ``None``."""
    found = vars(cls).get(HANDLER_ATTRIBUTE)
    return found if isinstance(found, Handler) else None


def _check_constructor(klass: type) -> None:
    try:
        signature = inspect.signature(klass)
    except (TypeError, ValueError):  # a builtin base without a signature: trust it
        return
    try:
        signature.bind()
    except TypeError:
        raise TypeError(
            f"@atasks.handler {klass.__qualname__}: its servers make one instance with no "
            f"arguments, and {klass.__qualname__}{signature} needs some; give a factory that "
            f"makes it: @atasks.handler(factory=make_{klass.__name__.lower()})"
        ) from None


def forget_instances() -> None:
    """Drop every handler's instance in this process: the next calls make new ones (tests)."""
    for made in list(_handlers):
        made.forget()
