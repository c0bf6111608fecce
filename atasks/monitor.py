"""How ``atasks inspect``, ``atasks events`` and ``atasks dead list`` look to a person."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Sequence
from typing import Any

import click

from atasks.events import Event

COLOURS = {
    "received": "bright_black",
    "started": "cyan",
    "progress": "blue",
    "retrying": "magenta",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "yellow",
    "dead": "bright_red",
    "fired": "green",
    "missed": "red",
    "elected": "cyan",
    "resigned": "yellow",
}
MARKS = {
    "received": "·",
    "started": "▶",
    "progress": "…",
    "retrying": "↻",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "dead": "☠",
    "fired": "⏰",
    "missed": "⌛",
    "elected": "★",
    "resigned": "☆",
}
COLUMNS = (
    "host",
    "pid",
    "namespace",
    "role",
    "atasks",
    "concurrency",
    "in progress",
    "done",
    "failed",
    "retried",
    "uptime",
)


def columns(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a text table: ``headers``, a rule of dashes, then ``rows``, each column
    left-aligned to its widest cell, two spaces apart, no trailing spaces."""
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(headers)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
    return [line.rstrip() for line in lines]


def format_inspect_table(servers: list[dict[str, Any]]) -> str:
    """One line per server, then, if the answers carry them, one per request queue."""
    if not servers:
        return "no server answered"
    rows = [
        (
            str(s.get("host", "?")),
            str(s.get("pid", "?")),
            str(s.get("namespace", "?")),
            "scheduler" if s.get("scheduler") else "",
            _names(s.get("atasks", [])),
            str(s.get("concurrency", "?")),
            str(int(s.get("running", 0)) + int(s.get("parked", 0))),
            str(s.get("succeeded", 0)),
            str(s.get("failed", 0)),
            str(s.get("retried", 0)),
            _duration(float(s.get("uptime", 0))),
        )
        for s in servers
    ]
    lines = columns(COLUMNS, rows)
    queues = format_queues(servers)
    return "\n".join(lines + (["", queues] if queues else []))


QUEUE_COLUMNS = ("atask", "queue", "waiting", "consumers", "servers")


def format_queues(servers: list[dict[str, Any]]) -> str:
    """The request queue of each atask the servers serve: messages waiting (one may carry
    several calls), AMQP consumers (a server replacing its consumer keeps the old one until its
    deliveries are done) and the servers that answered serving it; empty when the answers carry
    no queues."""
    found = queue_rows(servers)
    if not found:
        return ""
    rows = [
        (
            row["atask"].rpartition(".")[2] or row["atask"],
            "(gone)" if row["queue"] is None else str(row["queue"]),
            "-" if row["messages"] is None else str(row["messages"]),
            "-" if row["consumers"] is None else str(row["consumers"]),
            str(row["servers"]),
        )
        for row in found
    ]
    return "\n".join(columns(QUEUE_COLUMNS, rows))


def queue_rows(servers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The request queues in the servers' answers, one row per atask by name: its ``queue``,
    ``messages`` waiting and ``consumers`` (``None`` for a queue that is gone) and how many of
    the ``servers`` that answered serve it."""
    queues: dict[str, dict[str, Any] | None] = {}
    serving: dict[str, int] = {}
    for server in servers:
        for name, queue in (server.get("queues") or {}).items():
            queues[name] = queue
            serving[name] = serving.get(name, 0) + 1
    return [
        {
            "atask": name,
            "queue": None if queue is None else queue.get("queue", "?"),
            "messages": None if queue is None else queue.get("messages"),
            "consumers": None if queue is None else queue.get("consumers"),
            "servers": serving[name],
        }
        for name, queue in sorted(queues.items())
    ]


def scheduler_of(servers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The answer of the server holding the scheduler role, if one answered."""
    return next((server for server in servers if server.get("scheduler")), None)


def format_ping(server: dict[str, Any]) -> str:
    """One line for a server that answered ``atasks ping``."""
    served = len(server.get("atasks") or ())
    uptime = _duration(float(server.get("uptime", 0)))
    return (
        f"{server.get('server', '?')} answers: namespace {server.get('namespace', '?')}, "
        f"{served} atask{'s' if served != 1 else ''}, up {uptime}"
    )


SCHEDULE_COLUMNS = ("schedule", "when", "next due", "last fired", "result")


def format_schedules(holder: dict[str, Any] | None, namespace: str) -> str:
    """The schedules as the server holding the scheduler role sees them: one line each."""
    if holder is None:
        return f"no server holds the scheduler role of namespace {namespace!r}"
    schedules: dict[str, dict[str, Any]] = holder.get("schedules") or {}
    rows = [
        (
            name,
            str(entry.get("when", "?")),
            str(entry.get("next_due") or "-"),
            str(entry.get("last_fired") or "-"),
            _result(entry.get("result")),
        )
        for name, entry in sorted(schedules.items())
    ]
    lines = [f"scheduler: {holder.get('server', '?')}"]
    if not rows:
        return "\n".join([*lines, "no schedules"])
    return "\n".join([*lines, *columns(SCHEDULE_COLUMNS, rows)])


def _result(result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    due = str(result.get("due", ""))
    return f"ok ({due})" if result.get("ok") else f"failed ({due}): {result.get('error')}"


def format_dead_letters(letters: list[dict[str, Any]], queue: str) -> str:
    """A count, then one line per atask and reason: how many, how long ago they died, and the
    last error of the one that died last."""
    if not letters:
        return f"no dead letters in {queue}"
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for letter in letters:  # oldest first
        key = (str(letter.get("atask", "?")), str(letter.get("reason", "?")))
        groups.setdefault(key, []).append(letter)
    rows = [
        (
            str(len(group)),
            atask,
            reason,
            _ages([letter.get("age") for letter in group]),
            _shorten(str(group[-1].get("error") or "-"), ERROR_WIDTH),
        )
        for (atask, reason), group in sorted(groups.items(), key=lambda item: -len(item[1]))
    ]
    plural = "s" if len(letters) != 1 else ""
    title = f"{len(letters)} dead letter{plural} in {queue}"
    return "\n".join([title, *columns(("count", "atask", "reason", "age", "last error"), rows)])


ERROR_WIDTH = 100


def _shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _ages(ages: list[float | None]) -> str:
    known = [age for age in ages if age is not None]
    if not known:
        return "?"
    youngest, oldest = _duration(min(known)), _duration(max(known))
    return youngest if youngest == oldest else f"{youngest} to {oldest}"


def _names(atasks: list[str]) -> str:
    text = ", ".join(name.rpartition(".")[2] for name in atasks)
    return text if len(text) <= 40 else text[:39] + "…"


def _duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 120:
        return f"{seconds:.2f}s"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class EventFormatter:
    """One line per event, indented by the event's depth in its call tree."""

    MAX_CALLS = 100_000

    def __init__(self) -> None:
        self._depth: OrderedDict[str, int] = OrderedDict()  # forgets its oldest at once

    def depth(self, event: Event) -> int:
        depth = self._depth.get(event.call_id)
        if depth is None:
            parent = self._depth.get(event.parent_id) if event.parent_id else None
            depth = parent + 1 if parent is not None else (1 if event.parent_id else 0)
            self._depth[event.call_id] = depth
            if len(self._depth) > self.MAX_CALLS:
                self._depth.popitem(last=False)
        return depth

    def format(self, event: Event) -> str:
        clock = time.strftime("%H:%M:%S", time.localtime(event.timestamp))
        clock += f".{int(event.timestamp * 1000) % 1000:03d}"
        kind = click.style(f"{MARKS[event.kind]} {event.kind:<9}", fg=COLOURS[event.kind])
        name = event.atask.rpartition(".")[2] or event.atask
        detail = ""
        if event.duration is not None and event.kind in ("succeeded", "failed", "cancelled"):
            detail += f" {_duration(event.duration)}"
        if event.kind == "retrying" and event.attempt is not None:
            detail += f" attempt {event.attempt} in {_duration(event.delay or 0.0)}"
        if event.error:
            detail += " " + click.style(event.error, fg="red")
        if event.progress:
            total = event.progress.get("total")
            done = event.progress.get("done")
            detail += f" {done:g}/{total:g}" if total is not None else f" {done:g}"
            if event.progress.get("note"):
                detail += f" {event.progress['note']}"
        indent = "  " * self.depth(event)
        # A scheduled call's id is <schedule>@<due time>: show the due time. Any other id is
        # shown whole: its first 16 digits are the same for every call of one process.
        ident = event.call_id.rpartition("@")[2] if "@" in event.call_id else event.call_id
        return (
            f"{clock} {indent}{kind} {click.style(name, bold=True)} "
            f"[{ident}]{detail}  {click.style(event.server, dim=True)}"
        )


ORDER_WINDOW = 0.3
"""Seconds ``in_time_order`` holds an event back for earlier ones from other servers (a server
sends its events every 0.05 s)."""


async def in_time_order(
    events: AsyncIterator[Event], window: float = ORDER_WINDOW
) -> AsyncIterator[Event]:
    """``events`` by their timestamps: each is held ``window`` seconds after it arrives, so that
    one that happened earlier on another server, arriving a little later, goes before it (and
    out with it). The timestamps are the servers' clocks; an event that arrives after a later
    one went out, ``window`` seconds earlier, is out of order."""
    loop = asyncio.get_running_loop()
    held: list[tuple[float, int, float, Event]] = []  # timestamp, arrival order, arrival time
    order = itertools.count()
    source = aiter(events)
    coming: asyncio.Future[Event] | None = None
    try:
        while True:
            if coming is None:
                coming = asyncio.ensure_future(anext(source))
            first = min((arrived for _, _, arrived, _ in held), default=None)
            wait = None if first is None else max(first + window - loop.time(), 0.0)
            done, _ = await asyncio.wait({coming}, timeout=wait)
            if done:
                try:
                    event = coming.result()
                except StopAsyncIteration:
                    break
                finally:
                    coming = None
                heapq.heappush(held, (event.timestamp or 0.0, next(order), loop.time(), event))
            due = loop.time() - window
            ripe = max((stamp for stamp, _, arrived, _ in held if arrived <= due), default=None)
            while held and ripe is not None and held[0][0] <= ripe:
                yield heapq.heappop(held)[3]
        while held:
            yield heapq.heappop(held)[3]
    finally:
        if coming is not None:  # let the source close itself (its broker channel) here
            coming.cancel()
            await asyncio.wait({coming})
            if not coming.cancelled():
                coming.exception()  # retrieved: closing may fail, and that is no news
