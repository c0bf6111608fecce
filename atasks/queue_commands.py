"""``atasks queues``: the request queues of a namespace, listed, purged, orphans deleted."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import TYPE_CHECKING

import click

from atasks.cli_base import Failure, namespace_option, quiet_backend, url_option, wait_option
from atasks.runner import one_line

if TYPE_CHECKING:
    from atasks.queue_admin import QueueRow

management_option = click.option(
    "--management-url",
    envvar="ATASKS_MANAGEMENT_URL",
    metavar="URL",
    help="RabbitMQ's management API, which lists queues (AMQP cannot). [ATASKS_MANAGEMENT_URL; "
    "default: the broker's host, port 15672, the AMQP URL's user and password]",
)
serving_wait = wait_option("Seconds to wait for the servers to say what they serve.")


@click.group(invoke_without_command=True)
@url_option
@namespace_option
@management_option
@serving_wait
@click.option("--json", "as_json", is_flag=True, help="One JSON list, for machines.")
@click.pass_context
def queues(
    ctx: click.Context,
    url: str | None,
    namespace: str,
    management_url: str | None,
    wait: float,
    as_json: bool,
) -> None:
    """List the namespace's request queues: messages ready, consumers, the servers serving
    their atask; an orphan has neither consumer nor server."""
    if ctx.invoked_subcommand is not None:
        return
    from atasks.queue_admin import format_rows

    rows, why = _rows(url, namespace, management_url, wait)
    if why:
        click.echo(f"warning: {why}", err=True)
    if as_json:
        click.echo(json.dumps([row.as_dict() for row in rows], indent=2))
    else:
        click.echo(format_rows(rows, namespace))


def _rows(
    url: str | None, namespace: str, management: str | None, wait: float
) -> tuple[list[QueueRow], str | None]:
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.queues import namespace_queues

    quiet_backend()
    try:
        return asyncio.run(namespace_queues(url or DEFAULT_URL, namespace, management, wait))
    except Exception as exc:
        raise Failure(f"cannot list queues: {one_line(exc)}") from exc


@queues.command("purge")
@click.argument("name")
@url_option
@namespace_option
def queues_purge(name: str, url: str | None, namespace: str) -> None:
    """Delete the requests waiting in NAME: a request queue, or the atask whose it is."""
    from atasks.queue_admin import queue_name
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.queues import purge_queue

    quiet_backend()
    queue = queue_name(namespace, name)
    try:
        count = asyncio.run(purge_queue(url or DEFAULT_URL, queue))
    except Exception as exc:
        raise Failure(f"cannot purge {queue}: {one_line(exc)}") from exc
    click.echo(f"purged {count} message{'s' if count != 1 else ''} from {queue}")


@queues.command("delete")
@click.option("--orphans", is_flag=True, required=True, help="The queues no one serves.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask.")
@url_option
@namespace_option
@management_option
@serving_wait
def queues_delete(
    orphans: bool,
    yes: bool,
    url: str | None,
    namespace: str,
    management_url: str | None,
    wait: float,
) -> None:
    """Delete the orphan request queues (no consumer, no server serving their atask), and the
    requests in them, after asking (unless --yes). Needs the management API."""
    from atasks.queue_admin import format_rows
    from atasks.queue_admin import orphans as orphans_of
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.queues import delete_queues

    rows, why = _rows(url, namespace, management_url, wait)
    if why:  # the queues no server serves are exactly those it cannot see
        raise Failure(f"cannot find orphans: {why}")
    found = orphans_of(rows)
    if not found:
        click.echo(f"no orphan queues in namespace {namespace!r}")
        return
    click.echo(format_rows(found, namespace))
    count = len(found)
    plural = "s" if count != 1 else ""
    if not yes:
        click.confirm(f"delete these {count} queue{plural} and their messages?", abort=True)
    try:
        done = asyncio.run(delete_queues(url or DEFAULT_URL, [row.queue for row in found]))
    except Exception as exc:
        raise Failure(f"cannot delete queues: {one_line(exc)}") from exc
    deleted = [queue for queue, why_not in done.items() if why_not is None]
    click.echo(f"deleted {len(deleted)} queue{'s' if len(deleted) != 1 else ''}")
    for queue, why_not in done.items():
        if why_not is not None:
            click.echo(f"left {queue}: {why_not}", err=True)
    if len(deleted) < count:
        sys.exit(1)
