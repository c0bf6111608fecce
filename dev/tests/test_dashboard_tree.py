"""The dashboard's call tree, built from lifecycle events: pure, no broker."""

from __future__ import annotations

from typing import Any

from atasks.dashboard.tree import CallTree
from atasks.events import Event


def event(
    kind: str, call_id: str, parent: str | None = None, at: float = 0.0, **more: Any
) -> Event:
    return Event(
        kind=kind,
        atask=f"app.{call_id.split('-')[0]}",
        call_id=call_id,
        parent_id=parent,
        namespace="default",
        server="host:1",
        timestamp=at,
        **more,
    )


def shape(tree: CallTree) -> list[tuple[str, str | None, str]]:
    return [(n["call_id"], n["parent"], n["state"]) for n in tree.snapshot()]


def test_nested_calls_sit_under_the_call_that_made_them() -> None:
    tree = CallTree()
    tree.apply(event("received", "outer-1", at=1))
    tree.apply(event("started", "outer-1", at=2))
    tree.apply(event("received", "inner-1", "outer-1", at=3))
    tree.apply(event("received", "inner-2", "outer-1", at=3.5))
    tree.apply(event("received", "deep-1", "inner-1", at=4))
    tree.apply(event("received", "other-1", at=4.5))
    changed = tree.apply(event("succeeded", "inner-1", "outer-1", at=5, duration=2.0))
    assert [(n.call_id, n.state, n.duration) for n in changed] == [("inner-1", "succeeded", 2.0)]
    # parents first, each call's children in the order they came, top-level calls oldest first
    assert shape(tree) == [
        ("outer-1", None, "started"),
        ("inner-1", "outer-1", "succeeded"),
        ("deep-1", "inner-1", "received"),
        ("inner-2", "outer-1", "received"),
        ("other-1", None, "received"),
    ]


def test_a_call_seen_before_its_parent_moves_under_it_when_the_parent_shows_up() -> None:
    tree = CallTree()
    tree.apply(event("received", "child-1", "parent-1", at=2))
    assert shape(tree) == [("child-1", None, "received")]  # on top while its parent is unknown
    changed = tree.apply(event("received", "parent-1", at=1))
    assert [(n.call_id, tree.parent_of(n)) for n in changed] == [
        ("parent-1", None),
        ("child-1", "parent-1"),  # the page is told to move it
    ]
    assert shape(tree) == [("parent-1", None, "received"), ("child-1", "parent-1", "received")]


def test_late_events_do_not_undo_an_end_and_progress_is_no_state() -> None:
    tree = CallTree()
    tree.apply(event("started", "a-1", at=2))
    tree.apply(event("progress", "a-1", at=3, progress={"done": 1, "total": 4}))
    assert shape(tree) == [("a-1", None, "started")]
    tree.apply(event("failed", "a-1", at=4, error="ValueError: no", duration=2.0))
    tree.apply(event("received", "a-1", at=1))  # from another server, arriving late
    tree.apply(event("started", "a-1", at=3.5))
    node = tree.get("a-1")
    assert node is not None
    assert (node.state, node.error, node.progress) == (
        "failed",
        "ValueError: no",
        {"done": 1, "total": 4},
    )
    tree.apply(event("retrying", "b-1", at=1, attempt=2, delay=0.5))
    tree.apply(event("started", "b-1", at=2))
    retried = tree.get("b-1")
    assert retried is not None
    assert (retried.state, retried.attempt) == ("started", 2)


def test_scheduler_events_are_not_calls() -> None:
    tree = CallTree()
    assert tree.apply(event("fired", "nightly@2026-01-01T00:00:00+00:00")) == []
    assert tree.apply(event("elected", "")) == []
    assert len(tree) == 0


def test_the_oldest_top_level_call_goes_with_its_subtree_past_the_limit() -> None:
    tree = CallTree(limit=4)
    tree.apply(event("received", "a-1", at=1))
    tree.apply(event("received", "a-2", "a-1", at=2))
    tree.apply(event("received", "a-3", "a-2", at=3))
    tree.apply(event("received", "b-1", at=4))
    tree.apply(event("received", "orphan-1", "gone-1", at=4.5))
    assert [n[0] for n in shape(tree)] == ["b-1", "orphan-1"]
    assert tree.get("a-3") is None
    for index in range(10):
        tree.apply(event("received", f"c-{index}", at=5 + index))
    assert len(tree) == 4
    assert [n[0] for n in shape(tree)] == ["c-6", "c-7", "c-8", "c-9"]
    tree.apply(event("received", "gone-1", at=20))  # its orphan went: nothing to adopt
    assert shape(tree)[-1] == ("gone-1", None, "received")
