"""What the dashboard shows, gathered from the broker with the code of ``atasks inspect``,
``atasks dead`` and ``atasks events``: the servers and their slots, the request queues, the
schedules, the dead letters, and the live call tree, which it hands to the pages watching."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aio_pika.abc import AbstractConnection

from atasks.dashboard.tree import CallTree
from atasks.events import Event
from atasks.monitor import in_time_order, queue_rows, scheduler_of
from atasks.runner import one_line
from atasks.transport.backends.amqp.dead import list_dead_letters, replay_dead_letters
from atasks.transport.backends.amqp.monitor import connect, depths_of, inspect_on, stream_events
from atasks.transport.backends.amqp.topology import Topology

log = logging.getLogger("atasks.dashboard")

DEAD_LIMIT = 500
"""Dead letters listed at most: a page is no place for more (``atasks dead`` has them all)."""


def overview_of(
    servers: list[dict[str, Any]], dead: dict[str, Any] | None, topology: Topology
) -> dict[str, Any]:
    """The page's view of the servers' inspect answers and of the dead-letter queue's depth."""
    holder = scheduler_of(servers)
    schedules: dict[str, dict[str, Any]] = (holder or {}).get("schedules") or {}
    return {
        "namespace": topology.namespace,
        "at": time.time(),
        "servers": [server_row(server) for server in servers],
        "queues": queue_rows(servers),
        "scheduler": None if holder is None else holder.get("server"),
        "schedules": [
            {
                "name": name,
                "when": entry.get("when"),
                "next_due": entry.get("next_due"),
                "last_fired": entry.get("last_fired"),
                "result": entry.get("result"),
            }
            for name, entry in sorted(schedules.items())
        ],
        "dead_letters": {
            "queue": topology.dead_letter_queue,
            "count": 0 if dead is None else dead.get("messages") or 0,
        },
    }


def server_row(answer: dict[str, Any]) -> dict[str, Any]:
    """One server's inspect answer, as the page shows it: its slots (``concurrency`` of them,
    ``running``, ``parked`` awaiting a child call, calls ``waiting`` for one) and its counts."""
    return {
        "server": answer.get("server"),
        "host": answer.get("host"),
        "pid": answer.get("pid"),
        "scheduler": bool(answer.get("scheduler")),
        "events": bool(answer.get("events")),
        "atasks": list(answer.get("atasks") or ()),
        "slots": {
            name: int(answer.get(name) or 0)
            for name in ("concurrency", "running", "parked", "waiting")
        },
        "succeeded": answer.get("succeeded", 0),
        "failed": answer.get("failed", 0),
        "retried": answer.get("retried", 0),
        "cancelled": answer.get("cancelled", 0),
        "uptime": answer.get("uptime", 0.0),
    }


@dataclass(eq=False)
class Watcher:
    """One page following the call tree: the changed calls for it, oldest first, or ``None``
    when the dashboard closes. One that falls too far behind is ``overflowed``: it is sent the
    whole tree again."""

    queue: asyncio.Queue[list[dict[str, Any]] | None] = field(
        default_factory=lambda: asyncio.Queue(1000)
    )
    overflowed: bool = False


class Board:
    """The dashboard's data, for one namespace on one broker. ``start()`` follows the events;
    ``overview()`` asks the servers, at most once every ``refresh`` seconds however many pages
    ask; ``close()`` stops it all."""

    def __init__(
        self, url: str, namespace: str, *, wait: float = 1.0, refresh: float = 2.0
    ) -> None:
        self.url = url
        self.topology = Topology(namespace)
        self.wait = wait
        self.refresh = refresh
        self.tree = CallTree()
        self.watchers: set[Watcher] = set()
        self._connection: AbstractConnection | None = None
        self._overview: dict[str, Any] | None = None
        self._taken = 0.0
        self._gathering = asyncio.Lock()
        self._feed: asyncio.Task[None] | None = None

    @property
    def namespace(self) -> str:
        return self.topology.namespace

    def start(self) -> None:
        """Follow the namespace's events into the call tree, reconnecting when the broker goes."""
        if self._feed is None:
            self._feed = asyncio.create_task(self._follow(), name="atasks dashboard events")

    async def close(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            await asyncio.wait({self._feed})
            self._feed = None
        self.end_watches()
        await self._disconnect()

    def end_watches(self) -> None:
        """Tell every watcher that the dashboard stops: their pages' streams end."""
        for watcher in self.watchers:
            try:
                watcher.queue.put_nowait(None)
            except asyncio.QueueFull:
                watcher.overflowed = True  # ends too, once it has sent what it holds

    async def overview(self) -> dict[str, Any]:
        """Servers, queues, schedules and the dead-letter count; raises when the broker cannot
        be asked."""
        async with self._gathering:  # pages asking at once share one round of questions
            loop = asyncio.get_running_loop()
            if self._overview is None or loop.time() - self._taken >= self.refresh:
                self._overview = await self._gather()
                self._taken = loop.time()
            return self._overview

    async def dead_letters(self) -> list[dict[str, Any]]:
        """The dead letters, oldest first (at most ``DEAD_LIMIT``), all left in place."""
        letters = await list_dead_letters(self.url, self.namespace, limit=DEAD_LIMIT)
        now = time.time()
        return [letter.as_dict(now) for letter in letters]

    async def replay(self, call_id: str | None = None) -> dict[str, Any]:
        """Replay the dead letters of call ``call_id``, or all of them."""
        done = await replay_dead_letters(self.url, self.namespace, call_id=call_id)
        self._overview = None  # the next overview counts again
        return {
            "replayed": [letter.call_id for letter in done.sent],
            "left": [{"call_id": letter.call_id, "why": why} for letter, why in done.left],
        }

    @contextlib.contextmanager
    def watch(self) -> Iterator[tuple[Watcher, list[dict[str, Any]]]]:
        """A watcher of the call tree, with the tree as it is now: nothing can change between
        the two."""
        watcher = Watcher()
        self.watchers.add(watcher)
        try:
            yield watcher, self.tree.snapshot()
        finally:
            self.watchers.discard(watcher)

    def take(self, event: Event) -> None:
        """Apply one event to the tree, and tell the watchers what changed."""
        changed = self.tree.apply(event)
        if not changed:
            return
        nodes = [node.as_dict(self.tree.parent_of(node)) for node in changed]
        for watcher in self.watchers:
            try:
                watcher.queue.put_nowait(nodes)
            except asyncio.QueueFull:
                watcher.overflowed = True

    async def _gather(self) -> dict[str, Any]:
        if self._connection is None or self._connection.is_closed:
            self._connection = await connect(self.url, self.wait + 5)
        try:
            servers = await inspect_on(self._connection, self.namespace, self.wait)
            dead = await depths_of(self._connection, {"dead": self.topology.dead_letter_queue})
        except Exception:
            await self._disconnect()  # the next round connects again
            raise
        return overview_of(servers, dead["dead"], self.topology)

    async def _disconnect(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                await connection.close()

    async def _follow(self) -> None:
        delay = 0.5
        while True:
            try:
                async for event in in_time_order(stream_events(self.url, self.namespace)):
                    delay = 0.5
                    self.take(event)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("events of %r: %s; again in %gs", self.namespace, one_line(exc), delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
