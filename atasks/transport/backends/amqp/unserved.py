"""Say so when calls wait on a request queue that no server consumes.

A call to an atask whose servers are all stopped (or not started yet) waits in its queue,
silently, until a server comes or its deadline passes. The caller's watchdog notices: every
``WAIT / 2`` seconds it looks at the calls awaited, and for each atask with a call that has
waited ``WAIT`` seconds or more, one passive declare of its request queue (all of them on a
channel of their own, within ``CHECK_TIMEOUT``) tells whether any server consumes it. If none
does, it logs one warning naming the atask, its queue and namespace and what to do; it says so
again only after a check has seen a consumer since. The calls keep waiting: a server may start
later and answer them.

The call path only notes each call's atask in a dict; there is no timer per call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from atasks.transport.backends.amqp.connection import Link, describe
from atasks.transport.backends.amqp.monitor import queue_depths
from atasks.transport.backends.amqp.topology import Topology

log = logging.getLogger("atasks.amqp")

WAIT = 5.0
"""Seconds a call waits before the watchdog checks that a server consumes its atask's queue."""
CHECK_TIMEOUT = 5.0
"""Seconds one round of checks may take (a channel of its own, a passive declare per atask)."""


class Unserved:
    """The watchdog's decisions, without a broker: which atasks to check, and when to warn."""

    def __init__(self, wait: float = WAIT) -> None:
        self.wait = wait
        self.warned: set[str] = set()
        """Atasks warned about, whose queue no check has seen consumed since."""
        self._since: dict[str, float] = {}  # call id: when it was first seen waiting
        self._asked: dict[str, list[str]] = {}  # atask: its calls the current check is for
        self._served: set[str] = set()  # calls whose atask a check found consumed

    def due(self, now: float, waiting: Mapping[str, str]) -> list[str]:
        """The atasks to check at ``now``, given the calls awaited (``waiting``: call id →
        atask): those with a call seen waiting ``wait`` seconds or more that no check has yet
        found served (a long call is checked once, not on every tick), and those warned about
        (to notice a server come, so that its going is said again)."""
        since, self._since = self._since, {}
        self._served.intersection_update(waiting)
        self._asked = {name: [] for name in self.warned}
        for call_id, name in waiting.items():
            first = self._since[call_id] = since.get(call_id, now)
            if now - first >= self.wait and call_id not in self._served:
                self._asked.setdefault(name, []).append(call_id)
        return sorted(self._asked)

    def checked(self, name: str, consumers: int) -> bool:
        """A check found ``consumers`` on the queue of atask ``name``; whether to warn now."""
        if consumers:
            self._served.update(self._asked.get(name, ()))
            self.warned.discard(name)
            return False
        if name in self.warned:
            return False
        self.warned.add(name)
        return True


class Watchdog:
    """Checks, for one caller, that the queues its calls wait on are consumed (see the module).

    ``waiting`` is the caller's own dict of the calls it awaits (call id → atask), read at each
    tick. ``start`` once connected; ``stop`` for good with the transport."""

    def __init__(
        self,
        link: Link,
        topology: Topology,
        waiting: Mapping[str, str],
        wait: float | None = None,
    ) -> None:
        self.link = link
        self.topology = topology
        self.waiting = waiting
        self.policy = Unserved(WAIT if wait is None else wait)
        self.rounds = 0
        """Rounds of checks finished (answered or not)."""
        self._timer: asyncio.TimerHandle | None = None
        self._round: asyncio.Task[None] | None = None
        self._stopped = False

    def start(self) -> None:
        """Tick from now on (again after a reconnect: no second timer)."""
        if self._timer is None and not self._stopped:
            self._timer = asyncio.get_running_loop().call_later(self.policy.wait / 2, self._tick)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._round is not None:
            self._round.cancel()

    def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.policy.wait / 2, self._tick)
        if self._round is not None and not self._round.done():
            return  # the last round is still on its way (it ends within CHECK_TIMEOUT)
        due = self.policy.due(loop.time(), self.waiting)
        # Under a resource alarm the calls wait for the broker (said by pressure.py), and it
        # would not answer before the alarm clears.
        if due and self.link.is_ready and self.link.pressure.reason is None:
            self._round = asyncio.ensure_future(self._check(due))

    async def _check(self, names: list[str]) -> None:
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                channels = await self.link.ready()
                found = await queue_depths(channels.connection, self.topology, names)
        except Exception as exc:  # aio-pika may raise anything; the next tick tries again
            log.debug("could not check the request queues of %s: %s", names, describe(exc))
            return
        finally:
            self.rounds += 1
        for name in names:
            queue = found[name]
            if self.policy.checked(name, queue["consumers"] if queue else 0):
                self._warn(name, exists=queue is not None)

    def _warn(self, name: str, *, exists: bool) -> None:
        queue = self.topology.request_queue(name)
        gone = "" if exists else " (the queue does not exist any more)"
        log.warning(
            "a call to atask %r has waited %gs and more: no server is consuming its request "
            "queue %r%s in namespace %r; start one with `atasks run --mode server MODULE` "
            "(MODULE defining the atask, with this namespace, broker and ATASKS_SECRET). Its "
            "calls wait on, for a server or until their deadline.",
            name,
            self.policy.wait,
            queue,
            gone,
            self.topology.namespace,
        )
