"""``@atask``: mark a function as awaitable on any server of its namespace; ``@atask_queue`` (fire
and forget) and ``@atask_broadcast`` (every server) likewise, without a result."""

from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import (
    Any,
    ClassVar,
    Concatenate,
    Generic,
    Literal,
    ParamSpec,
    Protocol,
    TypeVar,
    overload,
)

from atasks.auth_context import AuthCheck
from atasks.calls import check_priority
from atasks.namespaces import DEFAULT, register_atask
from atasks.rates import MAX_TOKENS, Rate
from atasks.retry import Retry
from atasks.router import Router, get_router
from atasks.settings import DEFAULT_WINDOW
from atasks.streams import RemoteStream
from atasks.threads import run_threaded

P = ParamSpec("P")
Q = ParamSpec("Q")
R = TypeVar("R")
Y = TypeVar("Y")

OPTIONS = (
    "name",
    "namespace",
    "timeout",
    "auth_required",
    "retry",
    "mechanism",
    "priority",
    "window",
    "limit",
    "rate",
    "throws",
)
"""What ``@atask(...)`` accepts; anything else is an error where it is decorated. A new option
is added here, to ``ATask.__init__`` and to the ``atask`` overloads."""

Kind = Literal["call", "queue", "broadcast"]
"""What awaiting an atask does: call it and return its result (``@atask``), queue it for one
server (``@atask_queue``) or send it to every server (``@atask_broadcast``); the last two return
``None`` once the broker has accepted the request."""

Mechanism = Literal["async", "thread", "process"]
"""How a server runs an atask: in its event loop (an ``async def``), in its thread pool (a plain
``def``, by default) or in its process pool (a plain ``def``, ``mechanism="process"``)."""


async def _coroutine_function() -> None:
    """Its code object marks atasks as coroutine functions for ``inspect`` (see ``ATask``)."""


async def _async_generator_function() -> AsyncIterator[None]:
    """Its code object marks streaming atasks as async generator functions for ``inspect``."""
    yield None


class ATask(Generic[P, R]):
    """An atask: calling it returns a coroutine that runs the function on a server.

    A plain ``def`` runs in a thread pool on the serving side (or, with ``mechanism="process"``,
    in a process pool); the caller awaits it all the same. So an atask is a coroutine function:
    ``inspect.iscoroutinefunction(atask)`` is true, and ``inspect.signature(atask)`` is the
    function's. On an async generator function, it is a ``StreamATask``.
    """

    runs_as_atask: ClassVar[bool] = True
    """Marks atasks for worker processes, which import a function by name and run its ``fn``."""

    owner: type | None = None
    """The class whose body defines it, for a method (``@atasks.handler``); else ``None``."""
    handler: Any = None
    """Its class's ``atasks.handlers.Handler``, once ``@atasks.handler`` decorated it."""

    def __new__(cls, fn: Any, **options: Any) -> ATask[P, R]:
        if (
            cls is ATask
            and inspect.isasyncgenfunction(fn)
            and options.get("kind", "call") == "call"
        ):
            return super().__new__(StreamATask)  # type: ignore[arg-type]
        return super().__new__(cls)

    def __init__(
        self,
        fn: Callable[P, Awaitable[R]] | Callable[P, R],
        *,
        name: str | None = None,
        namespace: str = DEFAULT,
        timeout: float | None = None,
        auth_required: bool | AuthCheck = False,
        retry: Retry | None = None,
        mechanism: Mechanism | None = None,
        priority: int | None = None,
        window: int | None = None,
        limit: int | None = None,
        rate: str | None = None,
        throws: tuple[type[Exception], ...] = (),
        kind: Kind = "call",
    ) -> None:
        if not callable(fn):
            raise TypeError(f"@atask needs a function, not {fn!r}")
        if not (isinstance(auth_required, bool) or callable(auth_required)):
            raise TypeError(
                f"auth_required takes True, False or a check of the claims, not {auth_required!r}"
            )
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"@atask(retry=...) takes an atasks.Retry, not {retry!r}")
        if not (
            isinstance(throws, tuple)
            and all(isinstance(t, type) and issubclass(t, Exception) for t in throws)
        ):
            raise TypeError(
                f"@atask(throws=...) takes a tuple of exception classes, not {throws!r}"
            )
        if priority is not None:
            where = getattr(fn, "__qualname__", repr(fn))
            check_priority(priority, f"@atask(priority={priority!r}) on {where}")
        self.fn = fn
        self.name = name or f"{fn.__module__}.{fn.__qualname__}"
        self.namespace = namespace
        self.timeout = timeout
        self.auth_required = auth_required
        self.retry = retry
        self.throws = throws
        """Exceptions that are part of its contract: a call failing with one is logged at INFO
        without a traceback, where any other failure is an ERROR with its traceback."""
        self.priority = priority
        self.limit = _limit(fn, limit, kind)
        """At most this many calls run at once across the namespace's servers (``None``: no
        bound but each server's concurrency)."""
        self.rate = None if rate is None else Rate.parse(rate)
        """At most ``rate.count`` calls start in any ``rate.period`` seconds, fleet-wide."""
        if self.rate is not None and kind == "broadcast":
            raise TypeError("@atask_broadcast runs on every server, so it takes no rate")
        self.unwrapped = retry is None and self.limit is None and self.rate is None
        """Whether serving a call needs none of the atask's own middlewares (retries, limits)."""
        self.kind: Kind = kind
        self.streams = inspect.isasyncgenfunction(fn)
        """Whether it is an async generator function: a call is a stream of its items."""
        self.window = _window(fn, self.streams, window, retry, kind)
        self._is_async = self.streams or inspect.iscoroutinefunction(fn)
        self.mechanism: Mechanism = _mechanism(fn, self._is_async, mechanism)
        functools.update_wrapper(self, fn)
        # Python 3.11's inspect.iscoroutinefunction() accepts a function-like object whose
        # __code__ is flagged as a coroutine's; 3.12+ also reads markcoroutinefunction's mark.
        # (A streaming atask's is flagged as an async generator's.)
        self.__code__ = (
            _async_generator_function if self.streams else _coroutine_function
        ).__code__
        self.__defaults__ = None
        self.__kwdefaults__ = None
        if hasattr(inspect, "markcoroutinefunction") and not self.streams:
            inspect.markcoroutinefunction(self)
        self._ns = register_atask(self)  # its namespace, never replaced (reset() empties it)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Coroutine[Any, Any, R]:
        if self.kind == "call":
            router: Router | None = self._ns.router
            if router is None:
                router = get_router(self.namespace)
            return router.caller.call(self, args, kwargs, None)
        return self._one_way(args, kwargs)

    async def _one_way(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        router = get_router(self.namespace)
        if self.kind == "queue":
            await router.enqueue(self, args, kwargs)
        else:
            await router.broadcast(self, args, kwargs)
        return None

    async def run(self, args: list[Any], kwargs: dict[str, Any]) -> R:
        """Run the function here, in this process (what a server does with a request)."""
        if self._is_async:
            return await self.fn(*args, **kwargs)  # type: ignore[misc, no-any-return]
        return await asyncio.to_thread(run_threaded, self.fn, args, kwargs)  # type: ignore[arg-type]

    def __set_name__(self, owner: type, name: str) -> None:
        """A method of ``owner``: it runs on the instance its server process makes (see
        ``atasks.handler``), and ``self`` is not one of its arguments on the caller's side."""
        method = self.__wrapped__  # type: ignore[attr-defined]
        if getattr(method, "__qualname__", None) != f"{owner.__qualname__}.{name}":
            return  # an atask defined elsewhere, also given a name in this class
        parameters = list(inspect.signature(method).parameters.values())
        if not parameters or parameters[0].kind not in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            raise TypeError(
                f"@atask method {owner.__qualname__}.{name} takes no self: it runs on an "
                "instance of its @atasks.handler class"
            )
        self.owner = owner

        def on_instance(*args: Any, **kwargs: Any) -> Any:
            handler = self.handler
            if handler is None:
                raise TypeError(self._not_handled())
            return method(handler.instance(), *args, **kwargs)

        functools.update_wrapper(on_instance, method)
        self.fn = on_instance
        self.__signature__ = inspect.signature(method).replace(parameters=parameters[1:])

    def __get__(
        self: ATask[Concatenate[Any, Q], R], instance: object, owner: type | None = None
    ) -> ATask[Q, R]:
        """``Mailer.send`` and ``Mailer().send`` are both the atask: ``self`` never travels."""
        if self.handler is None and self.owner is not None:
            raise TypeError(self._not_handled())
        return self  # type: ignore[return-value]

    def _not_handled(self) -> str:
        owner = self.owner.__qualname__ if self.owner is not None else "?"
        return (
            f"atask {self.name!r} is a method of {owner}, which is not an atasks handler: "
            f"decorate the class with @atasks.handler (each server process makes one "
            f"instance), or make the atask a function outside the class"
        )

    def same_function(self, other: ATask[Any, Any]) -> bool:
        """Whether ``other`` wraps this function (possibly from a second import of its file)."""
        return self.fn is other.fn or _where(self.__wrapped__) == _where(other.__wrapped__)  # type: ignore[attr-defined]

    def describe(self) -> str:
        module, qualname, filename, line = _where(self.__wrapped__)  # type: ignore[attr-defined]
        return f"{module}.{qualname} ({filename}:{line})"

    def __repr__(self) -> str:
        kind = "" if self.kind == "call" else f" {self.kind}"
        return f"<atask{kind} {self.name!r} namespace={self.namespace!r}>"


class StreamATask(ATask[P, AsyncIterator[Y]]):
    """An atask on an async generator function: calling it returns a ``RemoteStream`` of the
    items it yields on a server, ``async for item in export(query)``; ``inspect`` sees an async
    generator function. ``window`` items at most are made ahead of the consumer."""

    # A call is iterated, not awaited: what ATask.__call__ returns is replaced, on purpose.
    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> RemoteStream[Y]:  # type: ignore[override]
        return RemoteStream(get_router(self.namespace), self, args, kwargs)

    def __get__(
        self: StreamATask[Concatenate[Any, Q], Y], instance: object, owner: type | None = None
    ) -> StreamATask[Q, Y]:
        return ATask.__get__(self, instance, owner)  # type: ignore[return-value]


def _window(
    fn: Callable[..., Any], streams: bool, window: int | None, retry: Retry | None, kind: Kind
) -> int:
    """The window of a streaming atask (0 for any other), or a ``TypeError`` where it is
    decorated."""
    if streams and kind != "call":
        raise TypeError(
            f"@{_DECORATORS[kind]} returns no result, so it cannot stream: "
            f"{getattr(fn, '__qualname__', fn)} is an async generator function (use @atask)"
        )
    if not streams:
        if window is not None:
            raise TypeError(
                f"@atask(window=...) is for async generator functions, and "
                f"{getattr(fn, '__qualname__', fn)} is not one"
            )
        return 0
    if retry is not None:
        raise TypeError(
            "a streaming atask cannot retry: its items are delivered at most once, and a retry "
            "would send them again"
        )
    if window is None:
        return DEFAULT_WINDOW
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise TypeError(f"@atask(window=...) takes a whole number of items >= 1, not {window!r}")
    return window


def _limit(fn: Callable[..., Any], limit: int | None, kind: Kind) -> int | None:
    """The fleet-wide limit of an atask, or a ``TypeError`` where it is decorated."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TOKENS:
        raise TypeError(
            f"@atask(limit=...) takes a whole number of calls from 1 to {MAX_TOKENS}, not {limit!r}"
        )
    if kind == "broadcast":
        raise TypeError(
            f"@atask_broadcast runs on every server, so it takes no limit "
            f"({getattr(fn, '__qualname__', fn)})"
        )
    return limit


def _mechanism(fn: Callable[..., Any], is_async: bool, asked: Mechanism | None) -> Mechanism:
    """The mechanism ``fn`` runs with, or a ``TypeError`` where it is decorated."""
    if asked is None:
        return "async" if is_async else "thread"
    if asked not in ("async", "thread", "process"):
        raise TypeError(f"@atask(mechanism=...) is 'async', 'thread' or 'process', not {asked!r}")
    if is_async != (asked == "async"):
        kind = "an async def" if is_async else "a plain def"
        needs = "async def" if asked == "async" else "plain def"
        raise TypeError(f"mechanism={asked!r} runs a {needs}, and {fn.__qualname__} is {kind}")
    if asked == "process" and (
        "<" in getattr(fn, "__qualname__", "<") or getattr(fn, "__module__", None) == "__main__"
    ):
        raise TypeError(
            f"mechanism='process' runs a function that worker processes import by its name: "
            f"define {fn.__qualname__} at the top level of a module (not in the script being "
            "run, __main__)"
        )
    return asked


def _where(fn: Callable[..., Any]) -> tuple[str, str, str, int]:
    code = getattr(fn, "__code__", None)
    return (
        getattr(fn, "__module__", "?"),
        getattr(fn, "__qualname__", repr(fn)),
        code.co_filename if code else "?",
        code.co_firstlineno if code else 0,
    )


class ATaskDecorator(Protocol):
    """What ``atask(name=..., ...)`` returns: a decorator keeping the function's signature."""

    @overload
    def __call__(self, fn: Callable[P, AsyncIterator[Y]], /) -> StreamATask[P, Y]: ...

    @overload
    def __call__(self, fn: Callable[P, Awaitable[R]], /) -> ATask[P, R]: ...

    @overload
    def __call__(self, fn: Callable[P, R], /) -> ATask[P, R]: ...


@overload
def atask(fn: Callable[P, AsyncIterator[Y]], /) -> StreamATask[P, Y]: ...


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
    auth_required: bool | AuthCheck = False,
    retry: Retry | None = None,
    mechanism: Mechanism | None = None,
    priority: int | None = None,
    window: int | None = None,
    limit: int | None = None,
    rate: str | None = None,
    throws: tuple[type[Exception], ...] = (),
) -> ATaskDecorator: ...


def atask(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register ``fn`` as an atask: ``@atask`` or ``@atask(name=..., namespace=..., timeout=...,
    auth_required=..., retry=..., mechanism=..., priority=..., window=..., limit=...,
    rate=..., throws=...)``.

    ``timeout`` is a default limit in seconds for each call; the default name is
    ``<module>.<qualname>``. ``auth_required=True`` refuses calls that carry no valid auth
    context (``atasks.auth``) with ``AuthError``; a function of the claims (plain or async)
    also refuses those it returns false for. ``retry`` (an ``atasks.Retry``) runs a failing
    call again on its server. ``mechanism="process"`` runs a plain ``def`` in the server's
    process pool. ``priority`` (0 to 9) is the priority its calls are sent with where no
    ``atasks.priority()`` block or inherited priority is in force. On an async generator
    function, a call is a stream (``async for``) and ``window`` bounds how many items its
    server makes ahead of the consumer (default 64). ``limit`` bounds how many of its calls run
    at once across every server of the namespace (docs: guides/fleet-limits.md; ``limit=1``: a
    singleton); ``rate`` (``"100/s"``, ``"20/m"``) how many may start per period. ``throws``
    (a tuple of exception classes) names the failures that are part of its contract, which its
    server logs at INFO without a traceback rather than at ERROR. Any other option is a
    ``TypeError``.
    """
    return _decorate(fn, "call", options)


class OneWayDecorator(Protocol):
    """What ``atask_queue(name=...)`` and ``atask_broadcast(...)`` return."""

    def __call__(self, fn: Callable[P, Any], /) -> ATask[P, None]: ...


@overload
def atask_queue(fn: Callable[P, Any], /) -> ATask[P, None]: ...


@overload
def atask_queue(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    namespace: str = DEFAULT,
    timeout: float | None = None,
    auth_required: bool | AuthCheck = False,
    retry: Retry | None = None,
    mechanism: Mechanism | None = None,
    priority: int | None = None,
    limit: int | None = None,
    rate: str | None = None,
    throws: tuple[type[Exception], ...] = (),
) -> OneWayDecorator: ...


def atask_queue(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register ``fn`` as a fire-and-forget atask (upstream 0.0.3's name): ``await fn(...)``
    returns ``None`` once the broker has durably accepted the request, and one server runs it,
    at least once. Takes ``@atask``'s options; a call failing after its ``retry`` attempts (or
    refused) becomes a dead letter with its last error (``atasks dead list``)."""
    return _decorate(fn, "queue", options)


@overload
def atask_broadcast(fn: Callable[P, Any], /) -> ATask[P, None]: ...


@overload
def atask_broadcast(
    fn: None = None,
    /,
    *,
    name: str | None = None,
    namespace: str = DEFAULT,
    timeout: float | None = None,
    auth_required: bool | AuthCheck = False,
    retry: Retry | None = None,
    mechanism: Mechanism | None = None,
    priority: int | None = None,
    throws: tuple[type[Exception], ...] = (),
) -> OneWayDecorator: ...


def atask_broadcast(fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
    """Register ``fn`` as a broadcast atask (upstream 0.0.3's name): ``await fn(...)`` returns
    ``None`` once the broker has accepted the request, and every server serving it at that
    moment runs its own copy (a server that is down does not get it). Raises ``JobNotFound``
    when no server serves it. Takes ``@atask``'s options."""
    return _decorate(fn, "broadcast", options)


_DECORATORS: dict[Kind, str] = {
    "call": "atask",
    "queue": "atask_queue",
    "broadcast": "atask_broadcast",
}


def _decorate(fn: Callable[..., Any] | None, kind: Kind, options: dict[str, Any]) -> Any:
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(
            f"unknown @{_DECORATORS[kind]} option{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(unknown)}: @{_DECORATORS[kind]} takes {', '.join(OPTIONS)}"
        )

    def wrap(f: Callable[..., Any]) -> ATask[Any, Any]:
        return ATask(f, kind=kind, **options)

    return wrap(fn) if fn is not None else wrap
