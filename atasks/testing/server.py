"""An ``atasks run --mode server`` subprocess for tests, ready once it serves and answers a
ping, stopped by its PID (``atasks_server`` in ``atasks.pytest_plugin``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from atasks.supervisor import READY_FD_ENV

STOP_TIMEOUT = 30.0
"""Seconds a stopped server has to drain and exit before it is killed."""


class ServerProcess:
    """An ``atasks run TARGET --mode server --url URL`` process; its output goes to ``log_path``."""

    def __init__(self, target: str, url: str, log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.target = target
        self.url = url
        self.log_path = log_path
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self._ready_fd: int | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    @property
    def log(self) -> str:
        """What the server has written so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def start(self) -> None:
        """Start the process (without waiting for it: see ``wait_ready``)."""
        ready_read, ready_write = os.pipe()
        argv = [sys.executable, "-m", "atasks", "run", self.target, "--mode", "server"]
        argv += ["--transport", "amqp", "--url", self.url, *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", READY_FD_ENV: str(ready_write)}
        try:
            with open(self.log_path, "ab") as log:
                self.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    pass_fds=(ready_write,),
                    start_new_session=True,  # a Ctrl-C at the terminal is for pytest
                )
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        self._ready_fd = ready_read

    async def wait_ready(self, namespace: str = "default", within: float = 60.0) -> None:
        """Until the server has declared every queue of its atasks and answers a ping; a
        ``RuntimeError`` with its log if it exits first or ``within`` seconds pass."""
        from atasks.transport.backends.amqp.monitor import ping_servers

        fd, self._ready_fd = self._ready_fd, None
        if fd is None or self.process is None:
            raise RuntimeError("start() the server before waiting for it")
        try:
            async with asyncio.timeout(within):
                if not await _said_ready(fd):
                    raise RuntimeError(self._failed("exited before it served"))
                while True:
                    answers = await ping_servers(self.url, namespace, 2.0)
                    if any(answer.get("pid") == self.pid for answer in answers):
                        return
                    if self.process.poll() is not None:
                        raise RuntimeError(self._failed("exited"))
        except TimeoutError:
            raise RuntimeError(self._failed(f"did not serve within {within:g}s")) from None
        finally:
            os.close(fd)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM (it drains), then SIGKILL after ``timeout`` seconds; returns its exit code."""
        process = self.process
        if process is None:
            return 0
        if self._ready_fd is not None:
            os.close(self._ready_fd)
            self._ready_fd = None
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
        return process.wait()

    def _failed(self, what: str) -> str:
        code = self.process.poll() if self.process is not None else None
        tail = "\n".join(self.log.splitlines()[-30:])
        return f"atasks server for {self.target} {what} (exit code {code}); its log:\n{tail}"


async def _said_ready(fd: int) -> bool:
    """Whether the server wrote to its ready pipe (``runner.announce_ready``), which it does
    once it serves; the pipe closes without a word if it exits first."""
    loop = asyncio.get_running_loop()
    readable: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, wake)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
    return bool(os.read(fd, 6))
