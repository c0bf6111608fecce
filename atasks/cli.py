"""``atasks run``: load modules of atasks and serve them, call them, or both in one process."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from atasks import runner, settings
from atasks.cli_base import (
    Failure,
    namespace_option,
    quiet_backend,
    seconds_option,
    url_option,
    wait_option,
)
from atasks.dashboard.command import dashboard
from atasks.dead_commands import dead
from atasks.errors import ConfigurationError
from atasks.queue_commands import queues
from atasks.runner import (
    RunFailure,
    RunOptions,
    RunUsageError,
    configure_logging,
    one_line,
    parse_option,
)

log = logging.getLogger("atasks.cli")
F = TypeVar("F", bound=Callable[..., Any])

HELP_RUN = """Import FILE_OR_MODULE... and run them.

\b
server    serve their atasks until SIGINT/SIGTERM (also runs any aiomain)
client    run each module's `async def aiomain(**options)`, sending atasks to servers
loopback  serve and call in this one process (the default; needs no broker)

aiomain receives this command's options (mode, transport, url, codec, concurrency, processes,
workers, grace, max_message_size, consumer_timeout, queue_type, events) that it names, all of
them if it takes **options, and every -o option, which wins over a command option of the same
name.

Every option can also come from its ATASKS_* variable, named in its help; an option given here
wins. `atasks settings` lists them all. ATASKS_SECRET signs pickle and auth contexts.
"""


if TYPE_CHECKING:  # generic from click 8.2 on
    _ParamType = click.ParamType[Any]
else:
    _ParamType = click.ParamType


class SettingType(_ParamType):
    """A command-line value checked as its ``ATASKS_*`` variable is (``atasks.settings``)."""

    def __init__(self, name: str) -> None:
        self.setting = settings.setting(name)
        self.name = name
        values = self.setting.values
        self.choices = values.replace("`", "").split(", ") if values.startswith("`") else None

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str | None:
        if self.choices:
            return "[" + "|".join(self.choices) + "]"
        return self.name.upper()

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return self.setting.parse(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


def setting_option(name: str, *decls: str, metavar: str | None = None) -> Callable[[F], F]:
    """``--<name>``, checked, documented and defaulted from the same ``Setting`` as its
    variable; ``None`` when not given (``runner.options_from`` reads the variable)."""
    found = settings.setting(name)
    default = found.default_text().replace("`", "")
    return click.option(
        "--" + name.replace("_", "-"),
        *decls,
        type=SettingType(name),
        default=None,
        metavar=metavar,
        help=f"{found.help.replace('`', '')} [{found.env}; default: {default}]",
    )


@click.group()
@click.version_option(package_name="atasks")
def main() -> None:
    """atasks: await coroutines across processes and hosts."""


@main.command(help=HELP_RUN)
@click.argument("targets", metavar="FILE_OR_MODULE...", nargs=-1, required=True)
@setting_option("mode")
@setting_option("transport", "transport_kind")
@setting_option("url", metavar="URL[,URL...]")
@setting_option("codec")
@click.option(
    "--insecure-pickle/--no-insecure-pickle",
    default=None,
    help="Allow unsigned pickle over a broker, where it is otherwise refused. "
    "[ATASKS_INSECURE_PICKLE; default: off]",
)
@click.option(
    "-o",
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="Passed to aiomain(); values are Python literals or strings.",
)
@setting_option("concurrency", metavar="N")
@setting_option("processes", metavar="N")
@setting_option("workers", metavar="N")
@setting_option("grace", metavar="SECONDS")
@setting_option("max_message_size", metavar="BYTES")
@setting_option("consumer_timeout", metavar="SECONDS")
@setting_option("connect_timeout", metavar="SECONDS")
@setting_option("queue_type")
@setting_option("health_port", metavar="PORT")
@setting_option("metrics_port", metavar="PORT")
@setting_option("endpoints_host", metavar="HOST")
@setting_option("middleware", metavar="MODULE:CLASS[,...]")
@click.option(
    "--events/--no-events",
    default=None,
    help="Servers publish lifecycle events (see `atasks events`). [ATASKS_EVENTS; default: off]",
)
@click.option(
    "--reload/--no-reload",
    default=None,
    help="Server mode, for development: restart the server, once drained, when a module it "
    "loaded changes (needs watchfiles: pip install 'atasks[reload]'). [ATASKS_RELOAD; "
    "default: off]",
)
@click.option("-v", "--verbose", count=True, help="More logging; tracebacks on errors.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def run(
    targets: tuple[str, ...],
    mode: str | None,
    transport_kind: str | None,
    url: str | None,
    codec: str | None,
    insecure_pickle: bool | None,
    options: tuple[str, ...],
    concurrency: int | None,
    processes: int | None,
    workers: int | None,
    grace: float | None,
    max_message_size: int | None,
    consumer_timeout: float | None,
    connect_timeout: float | None,
    queue_type: str | None,
    health_port: int | None,
    metrics_port: int | None,
    endpoints_host: str | None,
    middleware: tuple[str, ...] | None,
    events: bool | None,
    reload: bool | None,
    verbose: int,
    quiet: bool,
) -> None:
    given = {
        "mode": mode,
        "transport": transport_kind,
        "url": url,
        "codec": codec,
        "insecure_pickle": insecure_pickle,
        "concurrency": concurrency,
        "processes": processes,
        "workers": workers,
        "grace": grace,
        "max_message_size": max_message_size,
        "consumer_timeout": consumer_timeout,
        "connect_timeout": connect_timeout,
        "queue_type": queue_type,
        "events": events,
        "health_port": health_port,
        "metrics_port": metrics_port,
        "endpoints_host": endpoints_host,
        "middleware": middleware,
    }
    try:
        extra = dict(parse_option(item) for item in options)
        settings_ = runner.options_from(given, extra)
    except RunUsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except ConfigurationError as exc:
        raise click.UsageError(str(exc)) from exc
    configure_logging(verbose, quiet, server=settings_.mode == "server")

    def argv() -> list[str]:
        return _worker_argv(targets, settings_, options, verbose, quiet)

    try:
        if settings.value("reload", reload):
            code = _reload(targets, settings_, argv())
        else:
            code = runner.run(targets, settings_, argv)
    except RunUsageError as exc:
        raise click.UsageError(str(exc)) from exc
    except RunFailure as exc:
        if verbose:
            log.exception("atasks run failed")
        raise Failure(str(exc)) from exc
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if verbose:
            log.exception("atasks run failed")
        raise Failure(one_line(exc)) from exc
    if code:
        sys.exit(code)


main.add_command(dead)
main.add_command(dashboard)
main.add_command(queues)


@main.command("settings")
def settings_command() -> None:
    """Print every ATASKS_* variable: what it sets, its default and values (Markdown)."""
    click.echo(settings.markdown_table())


def _reload(targets: tuple[str, ...], settings: RunOptions, argv: list[str]) -> int:
    """``--reload``: one server in a child process, restarted when its modules change."""
    from atasks import reload

    if settings.mode != "server" or settings.workers > 1:
        raise RunUsageError("--reload runs one server: use it with --mode server, --workers 1")
    settings.check()
    # Each server the parent starts listens on the ports in turn: the old one has exited (and
    # closed them) before the next starts, so /readyz is unreachable only while it reloads.
    if settings.health_port is not None:
        argv += ["--health-port", str(settings.health_port)]
    if settings.metrics_port is not None:
        argv += ["--metrics-port", str(settings.metrics_port)]
    if settings.health_port is not None or settings.metrics_port is not None:
        argv += ["--endpoints-host", settings.endpoints_host]
    roots = [reload.root_of(target) for target in targets]
    try:
        return reload.run(argv, roots, settings.grace)
    except ImportError as exc:
        raise RunFailure(str(exc)) from exc


def _worker_argv(
    targets: tuple[str, ...],
    settings: RunOptions,
    options: tuple[str, ...],
    verbose: int,
    quiet: bool,
) -> list[str]:
    """The command line of one supervised worker: this run's options, with ``--workers 1``."""
    argv = [sys.executable, "-m", "atasks", "run", *targets, *settings.worker_flags()]
    if settings.connect_timeout is not None:  # not in worker_flags: run_atask has no such flag
        argv += ["--connect-timeout", repr(settings.connect_timeout)]
    if settings.middleware:  # neither this (run_atask's workers read ATASKS_MIDDLEWARE)
        argv += ["--middleware", ",".join(settings.middleware)]
    for item in options:
        argv += ["-o", item]
    if verbose:
        argv.append("-" + "v" * verbose)
    if quiet:
        argv.append("-q")
    return argv


@main.command()
@url_option
@namespace_option
@wait_option("Seconds to wait for answers; silent servers are left out.")
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for machines.")
def inspect_command(url: str | None, namespace: str, wait: float, as_json: bool) -> None:
    """Ask every live server what it is doing, and print a table of them and one of the request
    queues of their atasks (messages waiting, consumers). Exits 1 if no server answers."""
    from atasks.monitor import format_inspect_table
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.monitor import inspect_with_queues

    quiet_backend()

    try:
        servers = asyncio.run(inspect_with_queues(url or DEFAULT_URL, namespace, wait))
    except Exception as exc:
        raise Failure(f"cannot inspect: {one_line(exc)}") from exc
    if as_json:
        click.echo(json.dumps(servers, indent=2))
    elif servers:
        click.echo(format_inspect_table(servers))
    if not servers:
        if not as_json:
            click.echo(f"no server of namespace {namespace!r} answered within {wait:g}s", err=True)
        sys.exit(1)


@main.command()
@url_option
@namespace_option
@seconds_option(
    "--timeout",
    "within",
    low=0.1,
    high=300,
    default=5.0,
    help="Seconds to wait for a server to answer, connecting included.",
)
@click.option(
    "--local",
    is_flag=True,
    help="Only a server on this host counts (a container's probe: its own server).",
)
def ping(url: str | None, namespace: str, within: float, local: bool) -> None:
    """Exit 0 once a server of the namespace answers, printing which; 1 if none does in time."""
    import socket

    from atasks.monitor import format_ping
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.connection import describe, safe_url
    from atasks.transport.backends.amqp.monitor import ping_servers

    quiet_backend()

    url = url or DEFAULT_URL
    where = ",".join(safe_url(part.strip()) for part in url.split(","))
    host = socket.gethostname() if local else None
    try:
        servers = asyncio.run(ping_servers(url, namespace, within, host=host))
    except TimeoutError as exc:
        raise Failure(f"cannot reach the broker at {where}: timed out after {within:g}s") from exc
    except Exception as exc:
        raise Failure(f"cannot reach the broker at {where}: {describe(exc, url)}") from exc
    if not servers:
        on = f" on {host}" if host else ""
        raise Failure(
            f"no server of namespace {namespace!r}{on} answered within {within:g}s (broker {where})"
        )
    for server in servers:
        click.echo(format_ping(server))


@main.command("schedules")
@url_option
@namespace_option
@wait_option("Seconds to wait for the servers' answers.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def schedules_command(url: str | None, namespace: str, wait: float, as_json: bool) -> None:
    """List each schedule with its next due time, last firing and its result, as the server
    holding the scheduler role knows them. Exits 1 if no server holds it."""
    from atasks.monitor import format_schedules, scheduler_of
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.monitor import inspect_servers

    quiet_backend()

    try:
        servers = asyncio.run(inspect_servers(url or DEFAULT_URL, namespace, wait))
    except Exception as exc:
        raise Failure(f"cannot list schedules: {one_line(exc)}") from exc
    holder = scheduler_of(servers)
    if as_json:
        found = holder.get("schedules") or {} if holder is not None else {}
        scheduler = holder.get("server") if holder is not None else None
        click.echo(json.dumps({"namespace": namespace, "scheduler": scheduler, "schedules": found}))
    else:
        click.echo(format_schedules(holder, namespace))
    if holder is None:
        sys.exit(1)


@main.command("limits")
@url_option
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for machines.")
def limits_command(url: str | None, namespace: str, as_json: bool) -> None:
    """List the namespace's fleet-wide limits, rates and locks: each pool's size, tokens free,
    held (by running calls or lock blocks), cooling down (a rate's, spent in its last period)
    and the calls waiting for one."""
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.pools import read_pools

    quiet_backend()
    try:
        pools = asyncio.run(read_pools(url or DEFAULT_URL, namespace))
    except Exception as exc:
        raise Failure(f"cannot list limits: {one_line(exc)}") from exc
    if as_json:
        click.echo(json.dumps([pool.as_dict() for pool in pools], indent=2))
        return
    if not pools:
        click.echo(f"no limits, rates or locks in namespace {namespace!r} yet")
        return
    width = max(len("POOL"), *(len(pool.key) for pool in pools))
    click.echo(f"{'POOL':<{width}}  {'SIZE':>5} {'FREE':>5} {'HELD':>5} {'COOLING':>7} WAITING")
    for p in pools:
        click.echo(
            f"{p.key:<{width}}  {p.size:>5} {p.free:>5} {p.held:>5} {p.cooling:>7} {p.waiting:>7}"
        )


@main.command()
@url_option
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, for machines.")
def events(url: str | None, namespace: str, as_json: bool) -> None:
    """Stream the lifecycle events of servers run with --events, live, until Ctrl-C: in the
    order they happened (each is held 0.3 s for earlier ones from other servers), with whole
    call ids."""
    from atasks.monitor import EventFormatter, in_time_order
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.monitor import stream_events

    quiet_backend()

    formatter = EventFormatter()

    async def follow() -> None:
        async for event in in_time_order(stream_events(url or DEFAULT_URL, namespace)):
            line = event.to_json().decode() if as_json else formatter.format(event)
            click.echo(line)

    try:
        asyncio.run(follow())
    except KeyboardInterrupt:
        pass
    except Exception as exc:
        raise Failure(f"cannot stream events: {one_line(exc)}") from exc
