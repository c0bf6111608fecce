"""The serve side's policies, without a broker: the suspect verdict, what a server remembers and
for how long, and when a batch message settles."""

from __future__ import annotations

import pytest

from atasks.transport.backends.amqp.server.policies import (
    CANCELLED_FOR,
    CANCELLED_KEPT,
    ISOLATE_AFTER,
    KEPT_FOR,
    KEPT_MAX,
    Memory,
    Outcome,
    Verdict,
    cancelled_outcome,
    settle_batch,
    verdict,
)

RUN, COUNT, ISOLATE, DEAD = Verdict.RUN, Verdict.COUNT, Verdict.ISOLATE, Verdict.DEAD

# deaths, counted, died, limit, queue, broker, isolated, unisolated → verdict
VERDICTS = [
    # never died: runs, on any queue
    (0, 0, False, 20, "quorum", 4, False, False, RUN),
    (0, 0, False, 20, "classic", 4, False, False, RUN),
    # one death: a classic queue counts it in a copy; a quorum queue counts it itself
    (1, 0, True, 20, "classic", 4, False, False, COUNT),
    (1, 0, True, 20, "quorum", 4, False, False, RUN),
    # ISOLATE_AFTER deaths: alone to the suspects queue…
    (2, 1, True, 20, "quorum", 4, False, False, ISOLATE),
    (2, 1, True, 20, "classic", 4, False, False, ISOLATE),
    (2, 1, True, 20, "classic", 3, False, False, ISOLATE),
    (2, 1, True, 20, "quorum", None, False, False, ISOLATE),
    # …but not on RabbitMQ 3.x quorum queues, whose count has more than deaths in it
    (2, 1, True, 20, "quorum", 3, False, False, RUN),
    (2, 1, True, 20, "classic", 3, False, True, COUNT),
    # not again once sent back from the suspects queue
    (2, 2, False, 20, "quorum", 4, False, True, RUN),
    (3, 2, True, 20, "classic", 4, False, True, COUNT),
    # a low limit isolates before its last delivery: at limit - 1, never before the first death
    (2, 1, True, 3, "quorum", 4, False, False, ISOLATE),
    (1, 0, True, 2, "quorum", 4, False, False, ISOLATE),
    (1, 0, True, 3, "quorum", 4, False, False, RUN),
    # at the delivery limit: dead, wherever it is
    (20, 19, True, 20, "quorum", 4, False, False, DEAD),
    (5, 4, True, 5, "classic", 4, False, False, DEAD),
    (5, 4, True, 5, "quorum", 4, True, False, DEAD),
    (21, 21, False, 20, "quorum", 4, False, True, DEAD),
    # a suspect runs unless it took its server down since it was counted
    (2, 2, False, 20, "quorum", 4, True, False, RUN),
    (3, 2, True, 20, "quorum", 4, True, False, ISOLATE),
    (3, 2, True, 20, "quorum", 3, True, False, ISOLATE),
    (4, 3, True, 5, "classic", 4, True, False, ISOLATE),
]


@pytest.mark.parametrize(
    ("deaths", "counted", "died", "limit", "queue", "major", "isolated", "unisolated", "expected"),
    VERDICTS,
)
def test_verdict(
    deaths: int,
    counted: int,
    died: bool,
    limit: int,
    queue: str,
    major: int | None,
    isolated: bool,
    unisolated: bool,
    expected: Verdict,
) -> None:
    assert (
        verdict(
            deaths=deaths,
            counted=counted,
            died=died,
            limit=limit,
            queue_type=queue,
            broker_major=major,
            isolated=isolated,
            unisolated=unisolated,
        )
        is expected
    )


def test_isolated_after_two_deaths() -> None:
    assert ISOLATE_AFTER == 2  # the table above is written for it


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_kept_replies_are_forgotten_after_kept_for() -> None:
    clock = Clock()
    memory: Memory[str, str] = Memory(KEPT_MAX, KEPT_FOR, clock)
    memory.put("a", "reply a")
    clock.now += KEPT_FOR - 1
    memory.put("b", "reply b")
    assert memory.get("a") == "reply a"  # not yet
    clock.now += 1
    memory.put("c", "reply c")  # a is KEPT_FOR old now
    assert "a" not in memory
    assert memory.get("b") == "reply b"
    assert len(memory) == 2


def test_at_most_kept_max_replies_are_kept_oldest_first_forgotten() -> None:
    clock = Clock()
    memory: Memory[int, int] = Memory(KEPT_MAX, KEPT_FOR, clock)
    for key in range(KEPT_MAX + 3):
        memory.put(key, key)
    assert len(memory) == KEPT_MAX
    assert [key for key in (0, 1, 2, 3, KEPT_MAX + 2) if key in memory] == [3, KEPT_MAX + 2]


def test_storing_a_key_again_keeps_its_place() -> None:
    clock = Clock()
    memory: Memory[str, int] = Memory(2, 10.0, clock)
    memory.put("a", 1)
    memory.put("b", 2)
    memory.put("a", 3)  # still the oldest in line
    memory.put("c", 4)
    assert "a" not in memory
    assert [*memory.values()] == [2, 4]
    memory.forget("b")
    assert [*memory.values()] == [4]


def test_cancelled_calls_are_remembered_for_an_hour() -> None:
    assert (CANCELLED_KEPT, CANCELLED_FOR) == (100_000, 3600.0)
    assert (KEPT_MAX, KEPT_FOR) == (100_000, 600.0)


ANSWERED, BACK, KEPT = Outcome.ANSWERED, Outcome.BACK, Outcome.KEPT

# each call's outcome → calls handed back, batch acked
SETTLEMENTS = [
    ({}, (), True),
    ({"a": ANSWERED, "b": ANSWERED}, (), True),
    ({"a": ANSWERED, "b": BACK, "c": ANSWERED, "d": BACK}, ("b", "d"), True),
    ({"a": BACK}, ("a",), True),
    ({"a": ANSWERED, "b": KEPT}, (), False),
    ({"a": KEPT, "b": BACK}, ("b",), False),
]


@pytest.mark.parametrize(("outcomes", "back", "ack"), SETTLEMENTS)
def test_batch_settlement(outcomes: dict[str, Outcome], back: tuple[str, ...], ack: bool) -> None:
    settling = settle_batch(outcomes)
    assert settling.hand_back == back
    assert settling.ack is ack


def test_a_cancelled_call_of_a_batch_is_answered_only_when_its_caller_cancelled_it() -> None:
    assert cancelled_outcome(True) is ANSWERED
    assert cancelled_outcome(False) is BACK
