"""``atasks dead``: the dead letters of a namespace, listed, replayed or purged."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import click

from atasks.cli_base import Failure, namespace_option, quiet_backend, url_option
from atasks.runner import one_line


@click.group()
def dead() -> None:
    """The namespace's dead letters: requests its servers gave up on (atasks-dead.<ns>)."""


@dead.command("list")
@url_option
@namespace_option
@click.option("--json", "as_json", is_flag=True, help="One JSON object, for machines.")
def dead_list(url: str | None, namespace: str, as_json: bool) -> None:
    """Count dead letters by atask and reason, with their age; all stay in place."""
    from atasks.monitor import format_dead_letters
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.dead import list_dead_letters
    from atasks.transport.backends.amqp.topology import Topology

    quiet_backend()

    try:
        letters = asyncio.run(list_dead_letters(url or DEFAULT_URL, namespace))
    except Exception as exc:
        raise Failure(f"cannot list dead letters: {one_line(exc)}") from exc
    now = time.time()
    found = [letter.as_dict(now) for letter in letters]
    queue = Topology(namespace).dead_letter_queue
    if as_json:
        click.echo(json.dumps({"queue": queue, "count": len(found), "dead_letters": found}))
    else:
        click.echo(format_dead_letters(found, queue))


@dead.command("replay")
@url_option
@namespace_option
@click.option("--atask", "atask_name", metavar="NAME", help="Only the dead letters of this atask.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N of them.")
def dead_replay(url: str | None, namespace: str, atask_name: str | None, limit: int | None) -> None:
    """Send dead letters back to their atask's queue, as fresh requests.

    Each keeps its call id, arguments and reply_to, and loses its deadline (past, most likely)
    and the broker's records of its death. One that cannot go back (its queue is gone) stays,
    and the command exits 1."""
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.dead import replay_dead_letters

    quiet_backend()

    try:
        replayed = asyncio.run(
            replay_dead_letters(url or DEFAULT_URL, namespace, atask=atask_name, limit=limit)
        )
    except Exception as exc:
        raise Failure(f"cannot replay dead letters: {one_line(exc)}") from exc
    count = len(replayed.sent)
    click.echo(f"replayed {count} dead letter{'s' if count != 1 else ''}")
    for letter, why in replayed.left:
        click.echo(f"left {letter.atask} [{letter.call_id}] in place: {why}", err=True)
    if replayed.left:
        sys.exit(1)


@dead.command("purge")
@url_option
@namespace_option
def dead_purge(url: str | None, namespace: str) -> None:
    """Delete every dead letter of the namespace."""
    from atasks.transport.backends.amqp import DEFAULT_URL
    from atasks.transport.backends.amqp.dead import purge_dead_letters

    quiet_backend()

    try:
        count = asyncio.run(purge_dead_letters(url or DEFAULT_URL, namespace))
    except Exception as exc:
        raise Failure(f"cannot purge dead letters: {one_line(exc)}") from exc
    click.echo(f"purged {count} dead letter{'s' if count != 1 else ''}")
