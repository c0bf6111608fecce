"""Start ``atasks run`` server processes for tests, and stop them by their PID."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import atasks
from atasks.errors import JobNotFound

if TYPE_CHECKING:
    from pamqp.commands import Queue

    from atasks.events import Event
    from atasks.testing.rabbitnode import RabbitNode

REPO = Path(__file__).resolve().parents[2]
WORKLOAD = "dev/tests/workload.py"


class Servers:
    """Server processes started by one test; ``stop_all`` ends any still running."""

    def __init__(self, url: str, log_dir: Path) -> None:
        self.url = url
        self.log_dir = log_dir
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(
        self,
        *args: str,
        workload: str = WORKLOAD,
        env: dict[str, str | None] | None = None,
        python: str = sys.executable,
        cwd: Path = REPO,
    ) -> subprocess.Popen[bytes]:
        """Start a server; ``env`` adds variables to this process's (``None`` removes one);
        ``python`` and ``cwd``: another atasks's (the previous release's)."""
        environment = {**os.environ, "PYTHONUNBUFFERED": "1"}
        for key, value in (env or {}).items():
            if value is None:
                environment.pop(key, None)
            else:
                environment[key] = value
        with open(self.log_dir / f"server-{len(self.processes)}.log", "wb") as log:
            process = subprocess.Popen(
                [
                    python,
                    "-m",
                    "atasks",
                    "run",
                    workload,
                    "--mode",
                    "server",
                    "--url",
                    self.url,
                    "-v",
                    *args,
                ],
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=environment,
                start_new_session=True,
            )
        self.processes.append(process)
        return process

    def log(self, index: int) -> str:
        return (self.log_dir / f"server-{index}.log").read_text(errors="replace")

    async def wait_serving(self, index: int, within: float = 30) -> None:
        """Until server ``index`` serves: every request queue of its atasks declared. A call
        published while its quorum queue is being declared may be refused (nacked) by the
        broker, so calling until one gets through (``wait_until_served``) is not enough."""
        await self.wait_logged(index, "serving; SIGINT or SIGTERM stops", within)

    async def wait_logged(self, index: int, line: str, within: float = 30) -> None:
        """Until server ``index`` has logged ``line``; fails at once should it exit first."""
        process = self.processes[index]
        async with asyncio.timeout(within):
            while line not in self.log(index):
                if process.poll() is not None:
                    raise RuntimeError(f"server {index} exited:\n{self.log(index)[-5000:]}")
                await asyncio.sleep(0.05)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


async def delete_queues(url: str, atasks_module: object, namespace: str = "default") -> None:
    """Delete the request queues of every atask in ``atasks_module`` and the namespace's
    suspects queue, so no request left over by one test reaches the servers of the next (and
    the next may declare them as another queue type)."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        for value in vars(atasks_module).values():
            if isinstance(value, atasks.ATask):
                await channel.queue_delete(f"atasks.{namespace}.{value.name}")
        await channel.queue_delete(f"atasks-suspects.{namespace}")


async def wait_until_served(atask: atasks.ATask, *args: object, within: float = 30) -> object:
    """Call ``atask`` until a server has declared its queue, then return its result."""
    async with asyncio.timeout(within):
        while True:
            try:
                return await atask(*args)
            except JobNotFound:
                await asyncio.sleep(0.1)


async def wait_for_consumers(url: str, queue: str, count: int, within: float = 30) -> None:
    """Wait until ``queue`` has at least ``count`` consumers."""
    await _wait_for_queue(url, queue, lambda found: found.consumer_count >= count, within)


async def wait_for_ready(url: str, queue: str, count: int, within: float = 30) -> None:
    """Wait until ``count`` requests wait in ``queue`` (ready: in the broker, held by nobody)."""
    await _wait_for_queue(url, queue, lambda found: found.message_count == count, within)


async def _wait_for_queue(
    url: str, queue: str, holds: Callable[[Queue.DeclareOk], bool], within: float
) -> None:
    """Wait until ``holds`` is true of what a passive declare of ``queue`` reports."""
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection, asyncio.timeout(within):
        channel = await connection.channel()
        while not holds((await channel.declare_queue(queue, passive=True)).declaration_result):
            await asyncio.sleep(0.02)


async def watch_events(url: str, into: list[Event]) -> asyncio.Future[None]:
    """Collect the events of the default namespace into ``into``, once subscribed: a probe
    event (atask ``probe.<token>``) is published until one arrives. Cancel the future after."""
    from atasks.transport.backends.amqp.monitor import stream_events

    async def collect() -> None:
        async for event in stream_events(url, "default"):
            into.append(event)

    watcher = asyncio.ensure_future(collect())
    token = uuid.uuid4().hex
    async with asyncio.timeout(30):
        while not any(e.call_id == token for e in into):
            await publish_probe(url, token)
            await asyncio.sleep(0.05)
    return watcher


async def publish_probe(url: str, token: str, namespace: str = "default") -> None:
    """Publish one made-up event, atask ``probe.<token>``, on the events exchange of
    ``namespace``: whoever sees it is subscribed."""
    import aio_pika

    from atasks.events import Event, encode_batch

    event = Event(
        kind="received", atask=f"probe.{token}", call_id=token, parent_id=None, namespace=namespace
    )
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(
            f"atasks.{namespace}.events", aio_pika.ExchangeType.TOPIC, durable=True
        )
        await exchange.publish(aio_pika.Message(encode_batch([event])), routing_key="events")


def isolates_suspects(rabbit: RabbitNode, queue_type: str) -> bool:
    """Whether servers on ``rabbit`` isolate suspects: not with RabbitMQ 3.x quorum queues, whose
    delivery count cannot tell a server's death (docs: guides/rabbitmq.md, Suspects)."""
    return queue_type == "classic" or int(str(rabbit.version).split(".")[0]) >= 4


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists (a zombie, not yet reaped by its parent, counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def until(condition: Callable[[], bool], within: float = 30, every: float = 0.02) -> None:
    """Wait until ``condition()`` holds, checking every ``every`` seconds."""
    async with asyncio.timeout(within):
        while not condition():
            await asyncio.sleep(every)
