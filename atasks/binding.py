"""Codecs and transports that install themselves where they are constructed: the 2019 promise
that ``PickleCodec()`` or ``AMQPTransport()`` becomes its namespace's codec or transport.

This module sits at the bottom of the house. The codec and transport contracts use its
metaclass; the registry (``atasks.namespaces``) says what installing means, with
``install_with``. Neither side imports the other.
"""

from __future__ import annotations

from abc import ABCMeta
from collections.abc import Callable
from typing import Any

Installer = Callable[[Any], None]
"""Installs a newly constructed codec or transport in its namespace (the registry's)."""

_installer: list[Installer] = []


def install_with(installer: Installer) -> None:
    """Make ``installer`` the one that installs each codec and transport once constructed."""
    _installer[:] = [installer]


class BindOnConstruction(ABCMeta):
    """Metaclass of codecs and transports: once ``__init__`` has run to its end — a subclass's
    attributes included — the new object is handed to the registry's installer.

    Installing after construction means that the registry never sees a half-built object (its
    ``repr``, say, in a warning). A subclass may declare methods it still lacks in
    ``_missing()``: constructing it is then a ``TypeError``, as with abstract methods.
    """

    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        missing: tuple[str, ...] = cls._missing()  # type: ignore[attr-defined]
        if missing:
            raise TypeError(
                f"Can't instantiate {cls.__name__} without an implementation of "
                f"{', '.join(missing)}"
            )
        instance = super().__call__(*args, **kwargs)
        for install in _installer:
            install(instance)
        return instance
