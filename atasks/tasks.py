"""``@atask``: mark a function as awaitable on any server of its namespace."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, ParamSpec, TypeVar, overload

from atasks.namespaces import DEFAULT, register_atask
from atasks.router import get_router

P = ParamSpec("P")
R = TypeVar("R")


class ATask(Generic[P, R]):
    """An atask: calling it returns a coroutine that runs the function on a server.

    A plain ``def`` runs in a thread pool on the serving side; the caller awaits it all the same.
    """

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        name: str | None = None,
        namespace: str = DEFAULT,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@atask needs a function, not {fn!r}")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.namespace = namespace
        self.timeout = timeout
        self.options = options
        self._is_async = inspect.iscoroutinefunction(fn)
        functools.update_wrapper(self, fn)
        register_atask(self)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        return get_router(self.namespace).call(self, args, kwargs)

    async def run(self, args: list[Any], kwargs: dict[str, Any]) -> R:
        """Run the function here, in this process (what a server does with a request)."""
        if self._is_async:
            return await self.fn(*args, **kwargs)  # type: ignore[misc, no-any-return]
        return await asyncio.to_thread(self.fn, *args, **kwargs)  # type: ignore[arg-type]

    def same_function(self, other: ATask[Any, Any]) -> bool:
        """Whether ``other`` wraps this function (possibly from a second import of its file)."""
        return self.fn is other.fn or _where(self.fn) == _where(other.fn)

    def describe(self) -> str:
        module, qualname, filename, line = _where(self.fn)
        return f"{module}.{qualname} ({filename}:{line})"

    def __repr__(self) -> str:
        return f"<atask {self.name!r} namespace={self.namespace!r}>"


def _where(fn: Callable[..., Any]) -> tuple[str, str, str, int]:
    code = getattr(fn, "__code__", None)
    return (
        getattr(fn, "__module__", "?"),
        getattr(fn, "__qualname__", repr(fn)),
        code.co_filename if code else "?",
        code.co_firstlineno if code else 0,
    )


@overload
def atask(fn: Callable[P, Awaitable[R]], /) -> ATask[P, R]: ...


@overload
def atask(fn: Callable[P, R], /) -> ATask[P, R]: ...


@overload
def atask(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    namespace: str = DEFAULT,
    timeout: float | None = None,
    **options: Any,
) -> Callable[[Callable[P, Awaitable[R]] | Callable[P, R]], ATask[P, R]]: ...


def atask(
    fn: Callable[..., Any] | None = None,
    /,
    *,
    name: str | None = None,
    namespace: str = DEFAULT,
    timeout: float | None = None,
    **options: Any,
) -> Any:
    """Register ``fn`` as an atask: ``@atask`` or ``@atask(name=..., namespace=..., timeout=...)``.

    ``timeout`` is a default limit in seconds for each call; the default name is
    ``<module>.<qualname>``.
    """

    def wrap(f: Callable[..., Any]) -> ATask[Any, Any]:
        return ATask(f, name=name, namespace=namespace, timeout=timeout, **options)

    return wrap(fn) if fn is not None else wrap
