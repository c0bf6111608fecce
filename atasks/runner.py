"""What ``atasks run`` and Django's ``manage.py run_atask`` both do: import modules of atasks,
set up every namespace they use, then serve them, run each module's ``aiomain``, or both.

The command lines only parse their flags into ``RunOptions`` and call ``run()``.
"""

from __future__ import annotations

import ast
import asyncio
import difflib
import gc
import importlib
import importlib.util
import inspect
import logging
import os
import pkgutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from atasks import logging as call_logging
from atasks import settings, unsigned
from atasks.errors import ATasksError
from atasks.health import Endpoints
from atasks.lifecycle import close, configured_middlewares, make_codec, make_transport
from atasks.namespaces import DEFAULT, namespace, namespaces
from atasks.reload import note_loaded
from atasks.router import get_router
from atasks.settings import DEFAULT_CONCURRENCY, DEFAULT_GRACE
from atasks.stopping import Stop, serve_until_stopped
from atasks.supervisor import READY_FD_ENV, WORKER_ENV, Companion, supervise

if TYPE_CHECKING:
    from atasks.middleware import Middleware
    from atasks.transport.contract import Transport

log = logging.getLogger("atasks.runner")

MODES = ("server", "client", "loopback")
BROKER_WAIT = 60.0
"""Seconds a server waits for its broker when ``connect_timeout`` is not given."""
TRANSPORTS = ("loopback", "amqp")


class RunFailure(Exception):
    """A one-line error for the person at the command line; its traceback only on request."""


class RunUsageError(RunFailure):
    """The command line asks for something impossible."""


@dataclass(frozen=True)
class RunOptions:
    """The options of one run, as both command lines take them."""

    mode: str = "loopback"
    transport: str | None = None
    """``loopback`` or ``amqp``; ``None`` picks loopback in loopback mode, amqp otherwise."""
    url: str | None = None
    codec: str = "pickle"
    insecure_pickle: bool = False
    """Allow unsigned pickle over a broker (refused otherwise)."""
    concurrency: int = DEFAULT_CONCURRENCY
    processes: int | None = None
    """Worker processes for ``mechanism="process"`` atasks; ``None``: one per CPU."""
    workers: int = 1
    grace: float = DEFAULT_GRACE
    max_message_size: int | None = None
    consumer_timeout: float | None = None
    connect_timeout: float | None = None
    """Time allowed to connect; a server waits that long for its broker (``BROKER_WAIT``)."""
    queue_type: str = "quorum"
    events: bool = False
    health_port: int | None = None
    metrics_port: int | None = None
    endpoints_host: str = "127.0.0.1"
    middleware: tuple[str, ...] = ()
    """``module:Class`` of each middleware added to every namespace run, outermost first."""
    extra: dict[str, Any] = field(default_factory=dict)
    """The ``-o KEY=VALUE`` options, for ``aiomain``."""

    @property
    def transport_kind(self) -> str:
        return self.transport or ("loopback" if self.mode == "loopback" else "amqp")

    def check(self) -> None:
        """Raise ``RunUsageError`` for options that cannot work together."""
        if self.mode not in MODES:
            raise RunUsageError(f"unknown mode {self.mode!r}: use one of {', '.join(MODES)}")
        if self.transport_kind not in TRANSPORTS:
            raise RunUsageError(f"unknown transport {self.transport!r}: use loopback or amqp")
        if self.transport_kind == "loopback" and self.mode != "loopback":
            raise RunUsageError(
                f"--mode {self.mode} needs a transport that leaves the process: "
                "use --transport amqp"
            )
        if self.workers > 1 and self.mode != "server":
            raise RunUsageError("--workers applies to --mode server only")
        if self.health_port and self.workers > 1:
            raise RunUsageError("--health-port serves one process: not yet with --workers")
        if (self.health_port or self.metrics_port) and self.mode == "client":
            raise RunUsageError("--health-port and --metrics-port apply to servers, not clients")
        if self.processes is not None and self.processes < 1:
            raise RunUsageError(f"--processes must be at least 1, not {self.processes}")

    def command_options(self) -> dict[str, Any]:
        """The command's own options, as ``aiomain`` receives them (the 2019 command passed its
        options to ``aiomain(**options)``)."""
        return {
            "mode": self.mode,
            "transport": self.transport_kind,
            "url": self.url,
            "codec": self.codec,
            "concurrency": self.concurrency,
            "processes": self.processes,
            "workers": self.workers,
            "grace": self.grace,
            "max_message_size": self.max_message_size,
            "consumer_timeout": self.consumer_timeout,
            "queue_type": self.queue_type,
            "events": self.events,
        }

    def worker_flags(self) -> list[str]:
        """This run's options as flags of a supervised worker's command line (``--workers 1``);
        both command lines take them alike."""
        flags = ["--mode", self.mode, "--transport", self.transport_kind, "--codec", self.codec]
        flags += ["--concurrency", str(self.concurrency), "--grace", repr(self.grace)]
        flags += ["--workers", "1", "--queue-type", self.queue_type]
        if self.url is not None:
            flags += ["--url", self.url]
        if self.processes is not None:
            flags += ["--processes", str(self.processes)]
        if self.max_message_size is not None:
            flags += ["--max-message-size", str(self.max_message_size)]
        if self.consumer_timeout is not None:
            flags += ["--consumer-timeout", repr(self.consumer_timeout)]
        if self.events:
            flags.append("--events")
        if self.insecure_pickle:
            flags.append("--insecure-pickle")
        return flags


def options_from(given: Mapping[str, Any], extra: dict[str, Any]) -> RunOptions:
    """The options of a run: those a command line was given (``None`` where it was not), else
    their ``ATASKS_*`` variables, else the defaults. ``ConfigurationError`` names a variable
    whose value is bad. ``ATASKS_WORKERS`` applies to server mode only."""
    mode = settings.value("mode", given.get("mode"))
    workers = given.get("workers")
    if workers is None:
        workers = (settings.from_env("workers") if mode == "server" else None) or 1

    def maybe(name: str) -> Any:  # no default of its own: the transport's
        found = given.get(name)
        return found if found is not None else settings.from_env(name)

    return RunOptions(
        mode=mode,
        transport=maybe("transport"),
        url=maybe("url"),
        codec=settings.value("codec", given.get("codec")),
        insecure_pickle=settings.value("insecure_pickle", given.get("insecure_pickle")),
        concurrency=settings.value("concurrency", given.get("concurrency")),
        processes=maybe("processes"),
        workers=workers,
        grace=settings.value("grace", given.get("grace")),
        max_message_size=maybe("max_message_size"),
        consumer_timeout=maybe("consumer_timeout"),
        connect_timeout=maybe("connect_timeout"),
        queue_type=settings.value("queue_type", given.get("queue_type")),
        events=settings.value("events", given.get("events")),
        health_port=maybe("health_port"),
        metrics_port=maybe("metrics_port"),
        endpoints_host=settings.value("endpoints_host", given.get("endpoints_host")),
        middleware=settings.value("middleware", given.get("middleware")) or (),
        extra=extra,
    )


def run(
    targets: list[str] | tuple[str, ...],
    options: RunOptions,
    worker_argv: Callable[[], list[str]],
) -> int:
    """Run ``targets`` as ``options`` say; returns the exit code. With ``workers`` > 1, runs
    ``worker_argv()`` (a command line with ``--workers 1``) that many times under a supervisor.

    Raises ``RunFailure`` (one line) for what the user can fix.
    """
    options.check()
    if options.workers > 1:
        if os.environ.get(WORKER_ENV):
            raise RunUsageError(f"a supervised worker cannot supervise workers ({WORKER_ENV})")
        return supervise(options.workers, worker_argv(), _shared_metrics(options))
    modules = [load(target) for target in targets]
    asyncio.run(_run(modules, options))
    return 0


def _shared_metrics(options: RunOptions) -> Companion | None:
    """With ``--metrics-port``, the supervisor serves its workers' metrics."""
    if options.metrics_port is None:
        return None
    from atasks.metrics_workers import SharedMetrics  # prometheus_client: an optional extra

    return SharedMetrics(options.endpoints_host, options.metrics_port)


def parse_option(item: str) -> tuple[str, Any]:
    """``KEY=VALUE``: the value as a Python literal, else as a string."""
    key, sep, raw = item.partition("=")
    if not sep or not key.isidentifier():
        raise RunUsageError(f"-o takes KEY=VALUE with KEY a Python name, not {item!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def configure_logging(verbose: int, quiet: bool, *, server: bool) -> None:
    """Servers say what they do; clients speak only of trouble unless -v. With -v, each line
    logged inside an atask names it, its call, parent call and trace (``atasks.logging``)."""
    if quiet:
        level = logging.WARNING
    elif verbose > 1:
        level = logging.DEBUG
    else:
        level = logging.INFO if verbose or server else logging.WARNING
    if verbose and not quiet:
        logging.basicConfig(level=level, format=call_logging.FORMAT)
        call_logging.install()
    else:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("atasks").setLevel(level)
    if verbose < 2:  # atasks says what matters (lost connection, reconnected) in one line
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)


def load(target: str) -> ModuleType:
    """Import a file or a module. A file gets the name its package path gives it, so that
    ``pkg/mod.py`` and ``pkg.mod`` name their atasks alike."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            near = _closest(path.name, [p.name for p in path.parent.glob("*.py")])
            hint = f"; did you mean {str(path.with_name(near))!r}?" if near else ""
            raise RunFailure(f"no such file: {target}{hint}")
        name, root = _module_name(path.resolve())
    else:
        name, root = target, Path.cwd()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise RunFailure(
                f"no module named {name!r} (from {target!r}){_module_hint(name, exc.name, root)}"
            ) from exc
        raise RunFailure(f"cannot import {target}: {one_line(exc)}") from exc
    except Exception as exc:
        raise RunFailure(f"cannot import {target}: {one_line(exc)}") from exc


def _closest(wanted: str, names: list[str]) -> str | None:
    found = difflib.get_close_matches(wanted, names, n=1, cutoff=0.75)
    return found[0] if found else None


def _module_hint(name: str, missing: str, root: Path) -> str:
    """'; did you mean ...?' for a misspelt module, else where it was looked for."""
    parent, _, last = missing.rpartition(".")
    try:
        spec = importlib.util.find_spec(parent) if parent else None
    except ImportError:
        spec = None
    folders = list(spec.submodule_search_locations or ()) if spec else [str(root)]
    near = _closest(last, [module.name for module in pkgutil.iter_modules(folders)])
    if near is not None:
        return f"; did you mean {(parent + '.' if parent else '') + near + name[len(missing) :]!r}?"
    return "" if parent else f"; not in {root} nor on sys.path"


def _module_name(path: Path) -> tuple[str, Path]:
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


def aiomain_arguments(
    aiomain: Callable[..., Any], command: dict[str, Any], extra: dict[str, Any]
) -> dict[str, Any]:
    """What ``aiomain`` is called with: the command's options it takes (all of them if it takes
    ``**options``) and every ``-o`` option, which wins over a command option of the same name."""
    parameters = inspect.signature(aiomain).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        taken = dict(command)
    else:
        named = {
            p.name
            for p in parameters
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        taken = {key: value for key, value in command.items() if key in named}
    return {**taken, **extra}


async def _run(modules: list[ModuleType], options: RunOptions) -> None:
    names = {ns.name for ns in namespaces() if ns.atasks} | {DEFAULT}
    middlewares = configured_middlewares(options.middleware)  # made once, for every namespace
    endpoints = await open_endpoints(options, names)
    measuring = _measure_worker(names)
    # A server stops gracefully on SIGINT or SIGTERM from now on, while it starts up too.
    stop = Stop() if options.mode == "server" else None
    if stop is not None:
        # What a server imported lives as long as it does: out of the collector's sight, a full
        # collection walks only what calls made (at 512 calls in flight, 2 µs of CPU a call
        # less). Again below, once serving, for its connections and routers; a call may be
        # served before that, never before this.
        gc.freeze()
    try:
        starting = _start(names, options, middlewares)
        if stop is None:
            await starting
        elif not await stop.unless_stopped(starting):
            log.info("stopped (%s) while %s", stop.by, _starting_stage(names))
            return
        command = options.command_options()
        mains = [
            _aiomain(module, command, options.extra)
            for module in modules
            if hasattr(module, "aiomain")
        ]
        if endpoints is not None:
            endpoints.health.transports = [
                found for name in sorted(names) if (found := namespace(name).transport)
            ]
            endpoints.health.serving = options.mode != "client"
        if stop is not None:
            gc.freeze()  # what serving made, as above
            announce_ready()
            await serve_until_stopped(stop, mains)
        else:
            await asyncio.gather(*mains)
    finally:
        if endpoints is not None:
            endpoints.health.stopping = True  # unready while the calls in progress finish
        if measuring is not None:
            measuring.cancel()
        await close(grace=options.grace)
        if endpoints is not None:
            await endpoints.stop()


async def _start(names: set[str], options: RunOptions, middlewares: Sequence[Middleware]) -> None:
    """Connect the transport of each namespace of ``names`` and, but for a client, serve it."""
    transport_options: dict[str, Any] = {}
    if options.transport_kind == "amqp":
        transport_options["url"] = options.url
        if options.max_message_size is not None:
            transport_options["max_message_size"] = options.max_message_size
        transport_options["events"] = options.events
        transport_options["queue_type"] = options.queue_type
        if options.consumer_timeout is not None:
            transport_options["consumer_timeout"] = options.consumer_timeout
        if options.connect_timeout is not None:
            transport_options["connect_timeout"] = options.connect_timeout
    for name in sorted(names):
        if namespace(name).codec is None:
            make_codec(options.codec, namespace=name)
        transport = namespace(name).transport or make_transport(
            options.transport_kind, namespace=name, **transport_options
        )
        unsigned.check(
            namespace(name).codec,
            in_process=transport.in_process,
            insecure_pickle=options.insecure_pickle,
            namespace=name,
            ways=unsigned.RUN_WAYS,
        )
        await _connect(transport, options)
        for one in middlewares:
            get_router(name).add_middleware(one)
        if options.mode != "client":
            count = len(namespace(name).atasks)
            log.info(
                "registering %d atask%s of namespace %r", count, "" if count == 1 else "s", name
            )
            await get_router(name).activate(
                transport, concurrency=options.concurrency, processes=options.processes
            )


def _starting_stage(names: set[str]) -> str:
    """What a server stopped during its start-up was doing: a registration in progress was
    finished, then undone; calls its first atasks took were handed back to the broker."""
    transports = [namespace(name).transport for name in sorted(names)]
    if not all(transport is not None and transport.connected for transport in transports):
        return "waiting for the broker"
    return "registering its atasks"


def _measure_worker(names: set[str]) -> asyncio.Task[None] | None:
    """A supervised worker measures into the files its supervisor serves (``metrics_workers``)."""
    if not os.environ.get("ATASKS_METRICS_DIR"):
        return None
    from atasks.metrics_workers import measure_worker

    return measure_worker(sorted(names))


async def open_endpoints(options: RunOptions, names: set[str]) -> Endpoints | None:
    """The health and metrics endpoints the options ask for, listening already (before the
    broker is there: ``/livez`` answers while the server waits for it)."""
    if options.health_port is None and options.metrics_port is None:
        return None
    metrics = None
    if options.metrics_port is not None:
        from atasks.metrics import serve_metrics  # prometheus_client: an optional extra

        metrics = options.metrics_port, serve_metrics(sorted(names))
    endpoints = Endpoints()
    try:
        await endpoints.start(options.endpoints_host, options.health_port, metrics)
    except OSError as exc:
        raise RunFailure(f"cannot listen on {options.endpoints_host}: {exc}") from exc
    return endpoints


async def _connect(transport: Transport, options: RunOptions) -> None:
    """Connect ``transport``. A server waits for its broker, which may start after it
    (containers, boot order); a signal ends the wait (``Stop``)."""
    if options.mode == "server" and options.transport_kind == "amqp":
        from atasks.transport.backends.amqp import AMQPTransport
        from atasks.transport.backends.amqp.connection import wait_for_broker

        if isinstance(transport, AMQPTransport):
            within = options.connect_timeout or BROKER_WAIT
            await wait_for_broker(transport.connect, transport.urls, within)
            return
    await transport.connect()


def announce_ready() -> None:
    """Tell a supervisor, through the pipe it gave, that this worker serves (and ``--reload``
    which files it loaded)."""
    note_loaded()
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is not None and fd.isdigit():
        try:
            os.write(int(fd), b"ready\n")
            os.close(int(fd))
        except OSError:
            pass


async def _aiomain(module: ModuleType, command: dict[str, Any], extra: dict[str, Any]) -> None:
    aiomain = module.aiomain
    if not inspect.iscoroutinefunction(aiomain):
        raise RunFailure(f"{module.__name__}.aiomain must be an async def")
    try:
        await aiomain(**aiomain_arguments(aiomain, command, extra))
    except TypeError as exc:
        if "argument" in str(exc) and "aiomain()" in str(exc):
            raise RunFailure(f"{module.__name__}.aiomain: {exc}") from exc
        raise


def one_line(exc: BaseException) -> str:
    """``exc`` in one line: its message, prefixed by its type unless it is one of ours."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, ATasksError | RunFailure):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
