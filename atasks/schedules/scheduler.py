"""The scheduler: runs in every serving router of a namespace with schedules; the one whose
transport gives it the scheduler role (``SchedulerSeat``) fires their due times.

Its state — per schedule, the latest due time handled and the outcome of the latest firing —
changes only in a ``commit`` together with the firings it records, so a new holder of the role
goes on exactly where the last one's last commit left off: no due time fired twice or skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import datetime as dt
import json
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any, Protocol

from atasks.events import SERVER_ID, Event
from atasks.namespaces import namespace
from atasks.transport.seat import SchedulerSeat, SeatLost

if TYPE_CHECKING:
    from atasks.transport.contract import Transport
    from atasks.transport.messages import Reply, Request

log = logging.getLogger("atasks.schedules")

LONGEST_SLEEP = 30.0  # seconds: wake up at least this often, whatever the clock did
RETRY_AFTER = 1.0  # seconds before taking the role again after a failure
STOP_WITHIN = 10.0  # seconds for the scheduler to stop once cancelled


class Plan(Protocol):
    """What a schedule says to do now (``atasks.schedules.decorator.Plan``)."""

    fire: list[dt.datetime]
    missed: tuple[dt.datetime, dt.datetime] | None
    last: dt.datetime


class Schedule(Protocol):
    """A registered schedule (``atasks.schedules.Schedule``), as the scheduler uses it."""

    @property
    def name(self) -> str: ...

    @property
    def atask(self) -> Any: ...

    @property
    def spec(self) -> str: ...

    @property
    def missed(self) -> str: ...

    def next_due(self, after: dt.datetime) -> dt.datetime: ...

    def call_id(self, due: dt.datetime) -> str: ...

    def plan(self, last: dt.datetime, now: dt.datetime) -> Plan: ...

    def wake_at(self, last: dt.datetime) -> dt.datetime: ...


class Firing(Protocol):
    """The serving router whose namespace's schedules are fired."""

    namespace: str

    async def firing(self, atask: Any, call_id: str) -> Request: ...


def registered(namespace_name: str) -> list[Schedule]:
    """The schedules registered in a namespace, by name."""
    return sorted(namespace(namespace_name).schedules.values(), key=lambda s: s.name)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class Scheduler:
    """Takes the scheduler role of ``router``'s namespace whenever it can, and fires due times
    while it holds it."""

    def __init__(self, router: Firing, transport: Transport, seat: SchedulerSeat) -> None:
        self.router = router
        self.transport = transport
        self.seat = seat
        seat.on_outcome = self._on_outcome
        self.holding = False
        self.state: dict[str, dict[str, Any]] = {}
        self._dirty = asyncio.Event()
        self._unsaved = False  # outcomes or merged states received since the last commit
        self._failed: list[Reply] = []  # outcomes of failed firings, to dead-letter at the commit
        seat.on_state = self._on_state
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        # A context of its own: nothing of whoever activated the router travels with firings.
        self._task = asyncio.get_running_loop().create_task(
            self._run(), context=contextvars.Context()
        )

    async def stop(self) -> None:
        """Give the role up (another server takes it over) and stop."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                async with asyncio.timeout(STOP_WITHIN):
                    await task
            except asyncio.CancelledError:
                pass
            except TimeoutError:
                log.error("the scheduler did not stop within %gs; leaving it", STOP_WITHIN)
        await self.seat.close()
        if self.holding:
            self.holding = False
            await self._role_event("resigned")

    def statistics(self) -> dict[str, Any]:
        """What ``atasks inspect`` and ``atasks schedules`` show of this server's scheduler."""
        if not self.holding:
            return {"scheduler": False}
        found = {}
        for schedule in registered(self.router.namespace):
            entry = self.state.get(schedule.name, {})
            last = entry.get("last")
            next_due = schedule.next_due(_time(last) if last else utcnow())
            found[schedule.name] = {
                "atask": schedule.atask.name,
                "when": schedule.spec,
                "missed": schedule.missed,
                "next_due": next_due.isoformat(),
                "last_fired": entry.get("fired"),
                "result": entry.get("result"),
            }
        return {"scheduler": True, "schedules": found}

    async def _run(self) -> None:
        while True:
            try:
                raw = await self.seat.take()
            except Exception as exc:
                log.warning("cannot take the scheduler role yet: %s", exc)
                await asyncio.sleep(RETRY_AFTER)
                continue
            self.state = _decode(raw)
            self._failed = []  # outcomes not committed come again with the role
            self.holding = True
            log.info("this server holds the scheduler role of namespace %r", self.router.namespace)
            await self._role_event("elected")
            leading = asyncio.ensure_future(self._lead())
            lost = asyncio.ensure_future(self.seat.wait_lost())
            try:
                await asyncio.wait({leading, lost}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in (leading, lost):
                    task.cancel()
                await asyncio.gather(leading, lost, return_exceptions=True)
            self.holding = False
            failure = leading.exception() if leading.done() and not leading.cancelled() else None
            if failure is None or isinstance(failure, SeatLost):
                log.warning("lost the scheduler role%s", f": {failure}" if failure else "")
                await self._role_event("resigned")
            else:  # not the broker's doing: give the role up for a while, to another server
                log.error("the scheduler failed; giving its role up", exc_info=failure)
                await self._role_event("resigned")
                await self.seat.release()
                await asyncio.sleep(RETRY_AFTER)

    async def _lead(self) -> None:
        while True:
            self._dirty.clear()
            now = utcnow()
            firings: list[tuple[Schedule, dt.datetime]] = []
            changed = False
            for schedule in registered(self.router.namespace):
                entry = self.state.setdefault(schedule.name, {})
                if "last" not in entry:  # new: due from now on
                    entry["last"] = now.isoformat()
                    changed = True
                plan = schedule.plan(_time(entry["last"]), now)
                if plan.missed is not None:
                    await self._missed(schedule, *plan.missed)
                if plan.last.isoformat() != entry["last"]:
                    entry["last"] = plan.last.isoformat()
                    changed = True
                for due in plan.fire:
                    firings.append((schedule, due))
                    entry["fired"] = due.isoformat()
            if changed or self._unsaved:
                await self._commit(firings)
            await self._sleep(now)

    async def _commit(self, firings: list[tuple[Schedule, dt.datetime]]) -> None:
        requests = [
            await self.router.firing(schedule.atask, schedule.call_id(due))
            for schedule, due in firings
        ]
        schedules = {schedule.name: schedule for schedule in registered(self.router.namespace)}
        failed, self._failed = self._failed, []
        dead = [
            (await self.router.firing(schedules[name].atask, reply.call_id), reply)
            for reply in failed
            if (name := reply.call_id.rpartition("@")[0]) in schedules
        ]
        self._unsaved = False
        await self.seat.commit(requests, _encode(self.state), dead)
        for schedule, due in firings:
            log.debug("fired %s for %s", schedule.name, due.isoformat())
            await self._emit("fired", schedule.atask.name, schedule.call_id(due))
        for request, _ in dead:
            await self._emit("dead", request.name, request.call_id)

    async def _sleep(self, now: dt.datetime) -> None:
        """Until the next firing, or an outcome to record, or ``LONGEST_SLEEP``."""
        wake = [
            schedule.wake_at(_time(self.state[schedule.name]["last"]))
            for schedule in registered(self.router.namespace)
            if schedule.name in self.state
        ]
        seconds = min([(at - now).total_seconds() for at in wake] + [LONGEST_SLEEP])
        # Not wait_for: on Python 3.11 it can swallow a cancellation that comes as the event
        # is set, and the scheduler would never stop.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(seconds, 0.0)):
                await self._dirty.wait()

    def _on_outcome(self, reply: Reply) -> None:
        name, _, due = reply.call_id.rpartition("@")
        entry = self.state.get(name)
        if entry is None:
            return
        if not reply.ok:  # never silent: dead-lettered, and kept for `atasks schedules`
            # INFO: the server that ran it logged the failure at ERROR, with its traceback.
            self._failed.append(reply)
            log.info(
                "scheduled run %s failed: %s: %s",
                reply.call_id,
                reply.error_type,
                reply.error_message,
            )
        entry["result"] = {
            "call_id": reply.call_id,
            "due": due,
            "ok": reply.ok,
            "error": f"{reply.error_type}: {reply.error_message}" if not reply.ok else None,
            "at": time.time(),
        }
        self._unsaved = True
        self._dirty.set()

    def _on_state(self, raw: bytes) -> None:
        """Another state showed up (two servers started on an empty queue at once): keep, for
        each schedule, the latest due time handled of the two."""
        for name, entry in _decode(raw).items():
            mine = self.state.setdefault(name, {})
            theirs = entry.get("last")
            if theirs and ("last" not in mine or _time(theirs) > _time(mine["last"])):
                mine.update(entry)
        self._unsaved = True
        self._dirty.set()

    async def _missed(self, schedule: Schedule, first: dt.datetime, latest: dt.datetime) -> None:
        span = first.isoformat() if first == latest else f"{first.isoformat()} to {latest}"
        if schedule.missed == "catch_up":
            log.warning(
                "schedule %s missed %s while no server held the scheduler role: running it once",
                schedule.name,
                span,
            )
        else:
            log.warning(
                "schedule %s missed %s while no server held the scheduler role: skipped",
                schedule.name,
                span,
            )
        await self._emit("missed", schedule.atask.name, schedule.call_id(latest))

    async def _role_event(self, kind: str) -> None:
        await self._emit(kind, "", "")

    async def _emit(self, kind: str, atask: str, call_id: str) -> None:
        if not self.transport.events_enabled:
            return
        event = Event(
            kind=kind, atask=atask, call_id=call_id, parent_id=None, namespace=self.router.namespace
        )
        try:
            await self.transport.publish_event(event)
        except Exception as exc:  # events are best effort
            log.debug("could not publish %s event: %s", kind, exc)


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


def _encode(state: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps(
        {"version": 1, "id": uuid.uuid4().hex, "by": SERVER_ID, "schedules": state},
        separators=(",", ":"),
    ).encode()


def _decode(raw: bytes | None) -> dict[str, dict[str, Any]]:
    if not raw:
        return {}
    try:
        found = json.loads(raw)
        state = found["schedules"]
        if isinstance(state, dict):
            return {str(k): v for k, v in state.items() if isinstance(v, dict)}
    except (ValueError, KeyError, TypeError):
        pass
    log.error("the scheduler state was unreadable: starting afresh (due from now on)")
    return {}


__all__ = ["Scheduler", "SeatLost"]
