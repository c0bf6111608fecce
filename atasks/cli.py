"""``atasks run``: load modules of atasks and serve them, call them, or both in one process."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

import click

from atasks.errors import ATasksError
from atasks.lifecycle import close, make_codec, make_transport
from atasks.namespaces import DEFAULT, namespace, namespaces
from atasks.router import DEFAULT_CONCURRENCY, DEFAULT_GRACE, get_router

log = logging.getLogger("atasks.cli")

MODES = ("server", "client", "loopback")
HELP_RUN = """Import FILE_OR_MODULE... and run them.

\b
server    serve their atasks until SIGINT/SIGTERM (also runs any aiomain)
client    run each module's `async def aiomain(**options)`, sending atasks to servers
loopback  serve and call in this one process (the default; needs no broker)

Every option can also come from the environment: ATASKS_MODE, ATASKS_TRANSPORT, ATASKS_URL,
ATASKS_CODEC, ATASKS_CONCURRENCY, ATASKS_WORKERS, ATASKS_GRACE, ATASKS_MAX_MESSAGE_SIZE,
ATASKS_QUEUE_TYPE, ATASKS_CONSUMER_TIMEOUT;
ATASKS_SECRET signs pickle.
"""


class Failure(click.ClickException):
    """A one-line error for the user; the traceback only with -v."""

    exit_code = 1


@click.group()
@click.version_option(package_name="atasks")
def main() -> None:
    """atasks: await coroutines across processes and hosts."""


@main.command(help=HELP_RUN)
@click.argument("targets", metavar="FILE_OR_MODULE...", nargs=-1, required=True)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default="loopback",
    envvar="ATASKS_MODE",
    show_default=True,
    help="What this process does.",
)
@click.option(
    "--transport",
    "transport_kind",
    type=click.Choice(["loopback", "amqp"]),
    envvar="ATASKS_TRANSPORT",
    help="How calls travel. Default: loopback in loopback mode, amqp otherwise.",
)
@click.option("--url", envvar="ATASKS_URL", help="Broker URL for --transport amqp.")
@click.option(
    "--codec",
    type=click.Choice(["pickle", "json"]),
    default="pickle",
    envvar="ATASKS_CODEC",
    show_default=True,
    help="How values are encoded.",
)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Passed to aiomain(**options); values are Python literals or strings.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=DEFAULT_CONCURRENCY,
    envvar="ATASKS_CONCURRENCY",
    show_default=True,
    help="Atasks one server process runs at once (those awaiting others don't count).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    envvar="ATASKS_WORKERS",
    show_default=True,
    help="Server processes, restarted when they die (server mode).",
)
@click.option(
    "--grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_GRACE,
    envvar="ATASKS_GRACE",
    show_default=True,
    help="Seconds a stopping server lets calls in progress finish.",
)
@click.option(
    "--max-message-size",
    type=click.IntRange(min=1),
    default=None,
    envvar="ATASKS_MAX_MESSAGE_SIZE",
    metavar="BYTES",
    help="Largest request or reply (default: RabbitMQ's own, 16 MiB on 4.x, 128 MiB on 3.x).",
)
@click.option(
    "--consumer-timeout",
    type=click.FloatRange(min=1),
    default=None,
    envvar="ATASKS_CONSUMER_TIMEOUT",
    metavar="SECONDS",
    help="The broker's consumer_timeout (RabbitMQ's default: 1800); calls running longer than "
    "half of it are leased, not held.",
)
@click.option(
    "--queue-type",
    type=click.Choice(["quorum", "classic"]),
    default="quorum",
    envvar="ATASKS_QUEUE_TYPE",
    show_default=True,
    help="RabbitMQ request queues: quorum (replicated, broker-counted deliveries) or classic.",
)
@click.option(
    "--events",
    is_flag=True,
    envvar="ATASKS_EVENTS",
    help="Servers publish lifecycle events (see `atasks events`).",
)
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def run(
    targets: tuple[str, ...],
    mode: str,
    transport_kind: str | None,
    url: str | None,
    codec: str,
    options: tuple[str, ...],
    concurrency: int,
    workers: int,
    grace: float,
    max_message_size: int | None,
    consumer_timeout: float | None,
    queue_type: str,
    events: bool,
    verbose: int,
    quiet: bool,
) -> None:
    _configure_logging(verbose, quiet, server=mode == "server")
    transport_kind = transport_kind or ("loopback" if mode == "loopback" else "amqp")
    if transport_kind == "loopback" and mode != "loopback":
        raise click.UsageError(
            f"--mode {mode} needs a transport that leaves the process: use --transport amqp"
        )
    if workers > 1:
        if mode != "server":
            raise click.UsageError("--workers applies to --mode server only")
        from atasks.supervisor import supervise

        sys.exit(supervise(workers, _worker_argv()))
    try:
        kwargs = dict(_parse_option(item) for item in options)
        modules = [_load(target) for target in targets]
        transport_options: dict[str, Any] = {}
        if transport_kind == "amqp":
            transport_options["url"] = url
            if max_message_size is not None:
                transport_options["max_message_size"] = max_message_size
            transport_options["events"] = events
            transport_options["queue_type"] = queue_type
            if consumer_timeout is not None:
                transport_options["consumer_timeout"] = consumer_timeout
        asyncio.run(
            _run(
                modules, mode, transport_kind, transport_options, codec, kwargs, concurrency, grace
            )
        )
    except (Failure, click.UsageError):
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if verbose:
            log.exception("atasks run failed")
        raise Failure(_one_line(exc)) from exc


@main.command()
@click.option("--url", envvar="ATASKS_URL", help="Broker URL.")
@click.option("--namespace", default=DEFAULT, show_default=True)
@click.option(
    "--wait",
    type=click.FloatRange(min=0.1, max=60),
    default=1.0,
    show_default=True,
    help="Seconds to wait for answers; silent servers are left out.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for machines.")
def inspect_command(url: str | None, namespace: str, wait: float, as_json: bool) -> None:
    """Ask every live server what it is doing, and print a table."""
    from atasks.monitor import format_inspect_table
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.monitor import inspect_servers

    try:
        servers = asyncio.run(inspect_servers(url or DEFAULT_URL, namespace, wait))
    except Exception as exc:
        raise Failure(f"cannot inspect: {_one_line(exc)}") from exc
    click.echo(json.dumps(servers, indent=2) if as_json else format_inspect_table(servers))


@main.command()
@click.option("--url", envvar="ATASKS_URL", help="Broker URL.")
@click.option("--namespace", default=DEFAULT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, for machines.")
def events(url: str | None, namespace: str, as_json: bool) -> None:
    """Stream the lifecycle events of servers run with --events, live, until Ctrl-C."""
    from atasks.monitor import EventFormatter
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.monitor import stream_events

    formatter = EventFormatter()

    async def follow() -> None:
        async for event in stream_events(url or DEFAULT_URL, namespace):
            line = event.to_json().decode() if as_json else formatter.format(event)
            click.echo(line)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        raise Failure(f"cannot stream events: {_one_line(exc)}") from exc


def _configure_logging(verbose: int, quiet: bool, *, server: bool) -> None:
    """Servers say what they do; clients speak only of trouble unless -v."""
    if quiet:
        level = logging.WARNING
    elif verbose > 1:
        level = logging.DEBUG
    else:
        level = logging.INFO if verbose or server else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbose < 2:  # atasks says what matters (lost connection, reconnected) in one line
        logging.getLogger("aiormq").setLevel(logging.CRITICAL)
        logging.getLogger("aio_pika").setLevel(logging.CRITICAL)


def _worker_argv() -> list[str]:
    """This command line with --workers dropped, for each supervised worker."""
    argv, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            argv.append(arg)
    return [sys.executable, "-m", "atasks", *argv]


def _parse_option(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.isidentifier():
        raise click.UsageError(f"-o takes KEY=VALUE with KEY a Python name, not {item!r}")
    try:
        return key, ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return key, raw


def _load(target: str) -> ModuleType:
    """Import a file or a module. A file gets the name its package path gives it, so that
    ``pkg/mod.py`` and ``pkg.mod`` name their atasks alike."""
    path = Path(target)
    if target.endswith(".py") or path.is_file():
        if not path.is_file():
            raise Failure(f"no such file: {target}")
        name, root = _module_name(path.resolve())
    else:
        name, root = target, Path.cwd()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise Failure(f"no module named {name!r} (from {target!r})") from exc
        raise Failure(f"cannot import {target}: {_one_line(exc)}") from exc
    except Exception as exc:
        raise Failure(f"cannot import {target}: {_one_line(exc)}") from exc


def _module_name(path: Path) -> tuple[str, Path]:
    parts = [path.stem]
    folder = path.parent
    while (folder / "__init__.py").is_file():
        parts.insert(0, folder.name)
        folder = folder.parent
    return ".".join(parts), folder


async def _run(
    modules: list[ModuleType],
    mode: str,
    transport_kind: str,
    transport_options: dict[str, Any],
    codec: str,
    options: dict[str, Any],
    concurrency: int,
    grace: float,
) -> None:
    names = {ns.name for ns in namespaces() if ns.atasks} | {DEFAULT}
    try:
        for name in sorted(names):
            if namespace(name).codec is None:
                make_codec(codec, namespace=name)
            transport = namespace(name).transport or make_transport(
                transport_kind, namespace=name, **transport_options
            )
            await transport.connect()
            if mode != "client":
                await get_router(name).activate(transport, concurrency=concurrency)
        mains = [_aiomain(module, options) for module in modules if hasattr(module, "aiomain")]
        if mode == "server":
            await _serve_until_signalled(mains)
        else:
            await asyncio.gather(*mains)
    finally:
        await close(grace=grace)


async def _aiomain(module: ModuleType, options: dict[str, Any]) -> None:
    aiomain = module.aiomain
    if not inspect.iscoroutinefunction(aiomain):
        raise Failure(f"{module.__name__}.aiomain must be an async def")
    try:
        await aiomain(**options)
    except TypeError as exc:
        if "argument" in str(exc) and "aiomain()" in str(exc):
            raise Failure(f"{module.__name__}.aiomain: {exc}") from exc
        raise


async def _serve_until_signalled(mains: list[Coroutine[Any, Any, None]]) -> None:
    """Serve until SIGINT or SIGTERM; an aiomain that fails stops the server with its error."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving; SIGINT or SIGTERM stops")
    stopper = asyncio.ensure_future(stop.wait())
    pending: set[asyncio.Future[Any]] = {stopper, *map(asyncio.ensure_future, mains)}
    try:
        while not stop.is_set():
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        log.info("stopping: finishing calls in progress")
    finally:
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        # The handlers stay until the process ends: a second signal must not kill the
        # graceful shutdown that follows (atasks.close() with --grace).


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    if isinstance(exc, ATasksError | Failure):
        return first or type(exc).__name__
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
