"""The live call tree of the dashboard: calls and their nested calls, built from lifecycle events
(pure: no broker, no web)."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from atasks.events import KINDS, Event

FINAL = frozenset({"succeeded", "failed", "cancelled", "dead"})


@dataclass(slots=True)
class CallNode:
    """What the events of one call said so far."""

    call_id: str
    atask: str
    parent_id: str | None
    state: str
    server: str
    started: float  # timestamp of the first event seen
    updated: float  # timestamp of the event that set ``state``
    duration: float | None = None
    error: str | None = None
    progress: dict[str, Any] | None = None
    attempt: int | None = None
    children: list[str] = field(default_factory=list)

    def as_dict(self, parent: str | None) -> dict[str, Any]:
        """The node for the page; ``parent`` is the call it sits under, if that is shown."""
        return {
            "call_id": self.call_id,
            "atask": self.atask,
            "parent": parent,
            "state": self.state,
            "server": self.server,
            "started": self.started,
            "updated": self.updated,
            "duration": self.duration,
            "error": self.error,
            "progress": self.progress,
            "attempt": self.attempt,
        }


class CallTree:
    """The calls of the last events, each under the call that made it. At most ``limit`` calls
    are kept: past that, the oldest top-level call goes, with everything under it.

    Events may come out of order (several servers): a call whose parent has not been seen yet
    stands at the top until its parent shows up, and an event older than the one that set a
    call's state changes only what it adds (an error, a duration), not the state, unless it
    ends the call."""

    def __init__(self, limit: int = 2000) -> None:
        self.limit = limit
        self._nodes: dict[str, CallNode] = {}
        self._roots: OrderedDict[str, None] = OrderedDict()  # top-level calls, oldest first
        self._orphans: dict[str, list[str]] = {}  # parent id not seen yet -> its children

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, call_id: str) -> CallNode | None:
        return self._nodes.get(call_id)

    def parent_of(self, node: CallNode) -> str | None:
        """The call ``node`` is shown under: its parent, if the tree holds it."""
        parent = node.parent_id
        return parent if parent is not None and parent in self._nodes else None

    def apply(self, event: Event) -> list[CallNode]:
        """Take ``event`` in; the calls it changed (the call itself, and calls of its own that
        were waiting for it to appear). Events of the scheduler role change nothing."""
        if event.kind not in KINDS or not event.call_id:
            return []
        node = self._nodes.get(event.call_id)
        if node is None:
            node = self._add(event)
            changed = [node, *(self._nodes[c] for c in node.children)]
        else:
            changed = [node]
            if _moves(node, event):
                node.state = event.kind
                node.updated = event.timestamp
        if event.duration is not None:
            node.duration = event.duration
        if event.error:
            node.error = event.error
        if event.progress:
            node.progress = event.progress
        if event.attempt is not None:
            node.attempt = event.attempt
        self._trim()
        return changed

    def snapshot(self) -> list[dict[str, Any]]:
        """Every call, parents before their children, oldest first: the page builds its tree in
        this order."""
        found: list[dict[str, Any]] = []
        stack = [self._nodes[root] for root in reversed(self._roots)]
        while stack:
            node = stack.pop()
            found.append(node.as_dict(self.parent_of(node)))
            stack.extend(self._nodes[child] for child in reversed(node.children))
        return found

    def _add(self, event: Event) -> CallNode:
        node = CallNode(
            call_id=event.call_id,
            atask=event.atask,
            parent_id=event.parent_id or None,
            state="started" if event.kind == "progress" else event.kind,
            server=event.server,
            started=event.timestamp,
            updated=event.timestamp,
        )
        self._nodes[node.call_id] = node
        parent = self._nodes.get(node.parent_id) if node.parent_id else None
        if parent is not None:
            parent.children.append(node.call_id)
        else:
            self._roots[node.call_id] = None
            if node.parent_id:
                self._orphans.setdefault(node.parent_id, []).append(node.call_id)
        for child in self._orphans.pop(node.call_id, []):  # its calls seen before it
            if child in self._nodes:
                self._roots.pop(child, None)
                node.children.append(child)
        return node

    def _trim(self) -> None:
        while len(self._nodes) > self.limit and self._roots:
            oldest, _ = self._roots.popitem(last=False)
            self._drop(oldest)

    def _drop(self, call_id: str) -> None:
        stack = [call_id]
        while stack:
            node = self._nodes.pop(stack.pop(), None)
            if node is None:
                continue
            stack.extend(node.children)
            if node.parent_id in self._orphans:
                waiting = self._orphans[node.parent_id]
                if node.call_id in waiting:
                    waiting.remove(node.call_id)
                if not waiting:
                    del self._orphans[node.parent_id]


def _moves(node: CallNode, event: Event) -> bool:
    """Whether ``event`` sets the state of ``node``: an end always does; anything else only if
    it is the newest event and the call has not ended. A progress report is no state."""
    if event.kind in FINAL:
        return True
    if event.kind == "progress" or node.state in FINAL:
        return False
    return event.timestamp >= node.updated
