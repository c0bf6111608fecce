"""The request queues of a namespace on the broker, for ``atasks queues``: found, measured,
purged and deleted.

AMQP 0-9-1 cannot list queues. Their names come from RabbitMQ's management HTTP API (the
``rabbitmq_management`` plugin), and from what the namespace's live servers say they serve
(``atasks inspect``'s question) where that API cannot be reached; their depth and consumers
always from a passive declare, exact at that moment (the management API's numbers lag by its
statistics interval, 5 s by default).
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import aio_pika

from atasks.queue_admin import QueueRow, atask_of
from atasks.transport.backends.amqp.monitor import ask_servers, connect, queue_depths
from atasks.transport.backends.amqp.topology import Topology

MANAGEMENT_PORT = 15672
HTTP_WITHIN = 10.0


class ManagementUnreachable(Exception):
    """The management API did not answer (not enabled, wrong URL or credentials)."""


def management_url(amqp_url: str, given: str | None) -> str:
    """The management API's URL: ``given``, else the first broker's host on port 15672; its
    credentials, where it names none, and its virtual host are the AMQP URL's."""
    first = urllib.parse.urlsplit(amqp_url.split(",")[0].strip())
    target = urllib.parse.urlsplit(given or f"http://{first.hostname}:{MANAGEMENT_PORT}/")
    user = target.username or urllib.parse.unquote(first.username or "guest")
    password = target.password or urllib.parse.unquote(first.password or "guest")
    vhost = urllib.parse.unquote(first.path[1:]) if len(first.path) > 1 else "/"
    host = target.hostname or "127.0.0.1"
    netloc = f"[{host}]" if ":" in host else host
    if target.port:
        netloc += f":{target.port}"
    return urllib.parse.urlunsplit(
        (
            target.scheme or "http",
            f"{urllib.parse.quote(user, '')}:{urllib.parse.quote(password, '')}@{netloc}",
            "/api/queues/" + urllib.parse.quote(vhost, safe=""),
            "columns=name",
            "",
        )
    )


def _get_json(url: str) -> Any:
    parts = urllib.parse.urlsplit(url)
    credentials = f"{urllib.parse.unquote(parts.username or '')}:"
    credentials += urllib.parse.unquote(parts.password or "")
    netloc = parts.hostname or ""
    netloc = f"[{netloc}]" if ":" in netloc else netloc
    bare = urllib.parse.urlunsplit(
        (parts.scheme, f"{netloc}:{parts.port}" if parts.port else netloc, *parts[2:])
    )
    request = urllib.request.Request(
        bare, headers={"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}
    )
    try:
        with urllib.request.urlopen(request, timeout=HTTP_WITHIN) as answer:
            return json.loads(answer.read())
    except (OSError, ValueError) as exc:  # URLError and HTTPError are OSErrors
        where = f"{parts.scheme}://{netloc}:{parts.port or ''}"
        raise ManagementUnreachable(f"the management API at {where} did not answer: {exc}") from exc


async def listed_queues(namespace: str, management: str) -> list[str]:
    """The names of the namespace's request queues, from the management API."""
    found = await asyncio.to_thread(_get_json, management)
    prefix = Topology(namespace).prefix
    return sorted(
        str(q["name"])
        for q in found
        if isinstance(q, dict) and str(q.get("name")).startswith(prefix)
    )


async def namespace_queues(
    url: str, namespace: str, management: str | None, wait: float
) -> tuple[list[QueueRow], str | None]:
    """Each request queue of the namespace with its depth, consumers and the servers that
    answered serving its atask; and why the list may be short (``None`` if complete): the
    management API did not answer, so only queues that servers serve are in it."""
    names: list[str] | None
    why: str | None = None
    try:
        names = await listed_queues(namespace, management_url(url, management))
    except ManagementUnreachable as exc:
        names, why = None, f"{exc}: only the queues of servers that answered are listed"
    topology = Topology(namespace)
    async with await connect(url, wait + 5) as connection:
        servers = await ask_servers(connection, namespace, wait)
        serving: dict[str, int] = {}
        for server in servers:
            for name in server.get("atasks") or ():
                serving[str(name)] = serving.get(str(name), 0) + 1
        if names is None:
            names = [topology.request_queue(name) for name in serving]
        atasks = [atask_of(namespace, queue) for queue in names]
        depths = await queue_depths(connection, topology, sorted(set(atasks)))
    rows = []
    for atask in sorted(set(atasks)):
        found = depths.get(atask)
        if found is None:  # deleted since it was listed
            continue
        rows.append(
            QueueRow(
                queue=str(found["queue"]),
                atask=atask,
                messages=int(found["messages"]),
                consumers=int(found["consumers"]),
                servers=serving.get(atask, 0),
            )
        )
    return rows, why


async def purge_queue(url: str, queue: str) -> int:
    """Delete the messages ready in ``queue``; how many. ``LookupError`` if there is no such
    queue (messages delivered to a server and not yet acknowledged stay)."""
    async with await connect(url, 10) as connection:
        channel = await connection.channel(publisher_confirms=False)
        try:
            declared = await channel.declare_queue(queue, passive=True)
        except aio_pika.exceptions.ChannelClosed as exc:
            raise LookupError(f"no queue {queue!r}") from exc
        purged = await declared.purge()
        return purged.message_count or 0


async def delete_queues(url: str, queues: list[str]) -> dict[str, str | None]:
    """Delete each of ``queues`` unless a consumer took it meanwhile: queue → ``None`` if
    deleted, else why not."""
    done: dict[str, str | None] = {}
    async with await connect(url, 10) as connection:
        channel = await connection.channel(publisher_confirms=False)
        for queue in queues:
            try:
                await channel.queue_delete(queue, if_unused=True)
                done[queue] = None
            except aio_pika.exceptions.ChannelClosed as exc:  # in use now, or gone
                done[queue] = str(exc.args[1] if len(exc.args) > 1 else exc)
                channel = await connection.channel(publisher_confirms=False)
    return done
