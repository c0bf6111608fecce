"""The ``atasks dashboard`` command; it imports the web stack only when run."""

from __future__ import annotations

import contextlib
import socket

import click

from atasks.cli_base import Failure, namespace_option, quiet_backend, seconds_option, url_option


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host`` (IPv4 or IPv6) and ``port`` (0: a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


@click.command()
@url_option
@namespace_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on. The page has no login and can replay dead letters: keep it on "
    "loopback, or behind a proxy that asks for one.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@seconds_option(
    "--refresh",
    low=0.5,
    high=60,
    default=2.0,
    help="Seconds between two rounds of questions to the servers, however many pages are open.",
)
def dashboard(url: str | None, namespace: str, host: str, port: int, refresh: float) -> None:
    """Serve a web page of the namespace: its servers and their slots, request queues, a live
    call tree (from servers run with --events), dead letters with a replay button, and
    schedules with their next due time. Needs the extra: pip install 'atasks[dashboard]'."""
    try:
        from atasks.dashboard.app import Server
        from atasks.dashboard.board import Board
    except ImportError as exc:
        raise Failure(
            f"the dashboard needs its extra: pip install 'atasks[dashboard]' ({exc})"
        ) from exc
    from atasks.transport.backends.amqp import DEFAULT_URL

    quiet_backend()
    try:
        sock = listen(host, port)
    except OSError as exc:
        raise Failure(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from exc
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    server = Server(Board(url or DEFAULT_URL, namespace, refresh=refresh))
    click.echo(f"dashboard of namespace {namespace!r} at http://{where}:{bound}/ (Ctrl-C stops)")
    # uvicorn raises the SIGINT it stopped on again, once stopped: a normal end here
    with contextlib.suppress(KeyboardInterrupt):
        server.run(sockets=[sock])
