"""Process-pool atasks (``@atask(mechanism="process")``): a plain ``def`` run in a worker process
of the server, so that CPU-bound work does not stall the server's event loop.

A worker runs one call at a time. A running function cannot be stopped from outside, so a call
cancelled while it runs — its deadline passed, or its caller gave up — has its worker killed
(SIGKILL) and reaped before the cancellation goes on; the next call starts a fresh worker.
Killing one worker never touches the calls running in the others (a ``ProcessPoolExecutor``
breaks as a whole when one of its workers dies, which is why this pool is its own).

A worker is a fresh interpreter (``python -c``), not a fork: it inherits nothing of the server's
loop, connections or threads, and it never runs the server's ``__main__`` again (as
``multiprocessing``'s ``spawn`` would: a script's unguarded ``asyncio.run(main())`` would run in
every worker). It imports the function's module by name, with the server's ``sys.path``.
Arguments and outcomes travel as pickles over a socket pair between the server and its own
workers; the workers' stdout and stderr are the server's.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import pickle
import signal
import socket
import struct
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from atasks.errors import ConfigurationError, DecodeError, EncodeError, RemoteError, type_name

log = logging.getLogger("atasks.processes")

HEADER = struct.Struct("!Q")  # the size of the pickle that follows
CLOSE_WAIT = 5.0  # seconds idle workers get to exit when the pool closes, before being killed


class ProcessPool:
    """At most ``size`` worker processes, each started when a call needs one, each running one
    call at a time; calls beyond ``size`` wait for a worker, first come, first served."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ConfigurationError(f"processes must be at least 1, not {size}")
        self.size = size
        self._permits = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._closed = False

    def __repr__(self) -> str:
        return f"ProcessPool(size={self.size}, alive={len(self._workers)})"

    async def run(self, fn: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
        """``fn(*args, **kwargs)`` in a worker process. Cancelling this kills that worker."""
        name = f"{fn.__module__}.{fn.__qualname__}"
        try:
            job = pickle.dumps(
                (_path(), fn.__module__, fn.__qualname__, args, kwargs), pickle.HIGHEST_PROTOCOL
            )
        except Exception as exc:
            raise EncodeError(
                f"the arguments of {name} cannot reach a worker process: {exc}"
            ) from exc
        async with self._permits:
            if self._closed:
                raise RuntimeError("the process pool is closed: its router stopped serving")
            worker = self._idle_worker() or await self._start()
            try:
                data = await worker.call(job)
            except (OSError, asyncio.IncompleteReadError):  # it died under the call
                self._workers.discard(worker)
                code = await worker.kill()
                raise RuntimeError(
                    f"the worker process {worker.pid} running {name} died ({_exit(code)})"
                ) from None
            except BaseException:  # cancelled while the function runs: nothing else stops it
                self._workers.discard(worker)
                log.info("killed worker process %d running %s: call cancelled", worker.pid, name)
                await worker.kill()
                raise
            self._idle.append(worker)
        try:
            ok, value = pickle.loads(data)
        except Exception as exc:
            raise DecodeError(
                f"the outcome of {name} cannot be unpickled outside its worker process: {exc}"
            ) from exc
        if ok:
            return value
        raise value

    def _idle_worker(self) -> _Worker | None:
        """An idle worker still alive (one may have died waiting: the OOM killer, say)."""
        while self._idle:
            worker = self._idle.pop()
            if worker.process.returncode is None:
                return worker
            self._workers.discard(worker)
            worker.writer.close()
            log.warning(
                "worker process %d died while idle (%s)",
                worker.pid,
                _exit(worker.process.returncode),
            )
        return None

    async def _start(self) -> _Worker:
        ours, theirs = socket.socketpair()
        try:
            with theirs:
                fd = theirs.fileno()
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    f"import sys; sys.path[:] = {_path()!r}; "
                    f"from atasks.processes import serve; serve({fd})",
                    stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(fd,),
                )
            try:
                reader, writer = await asyncio.open_connection(sock=ours)
            except BaseException:
                process.kill()
                await process.wait()
                raise
        except BaseException:
            ours.close()
            raise
        worker = _Worker(process, reader, writer)
        self._workers.add(worker)
        log.debug("started worker process %d", worker.pid)
        return worker

    async def close(self) -> None:
        """Stop every worker: an idle one exits once told, a busy one is killed. Idempotent."""
        self._closed = True
        workers, self._workers = self._workers, set()
        idle, self._idle = self._idle, []
        for worker in workers:
            if worker in idle:
                worker.stop()
            else:
                worker.send_kill()
        if not workers:
            return
        waits = {asyncio.ensure_future(worker.process.wait()): worker for worker in workers}
        _, late = await asyncio.wait(waits, timeout=CLOSE_WAIT)
        for waiting in late:
            waits[waiting].send_kill()
        if late:
            await asyncio.wait(late)


class _Worker:
    """One worker process and this side of its socket."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        self.process = process
        self.pid = process.pid
        self.reader = reader
        self.writer = writer

    async def call(self, job: bytes) -> bytes:
        self.writer.write(HEADER.pack(len(job)))
        self.writer.write(job)
        await self.writer.drain()
        (size,) = HEADER.unpack(await self.reader.readexactly(HEADER.size))
        return await self.reader.readexactly(size)

    def stop(self) -> None:
        """Close its socket: an idle worker exits."""
        self.writer.close()

    def send_kill(self) -> None:
        """SIGKILL it, if it still runs."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.writer.close()

    async def kill(self) -> int:
        """SIGKILL it, if it still runs, and reap it; its exit status."""
        self.send_kill()
        return await self.process.wait()


def _path() -> list[str]:
    """Where the server imports from, as a worker can be told (entries are str by convention;
    anything else is left out)."""
    return [entry for entry in sys.path if isinstance(entry, str)]


def _exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# --- in the worker process -------------------------------------------------------------------


def serve(fd: int) -> None:
    """A worker's life: run each job that arrives on socket ``fd`` and send back its outcome,
    until the server closes the socket (or goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the server, which drains
    functions: dict[tuple[str, str], Callable[..., Any]] = {}
    with socket.socket(fileno=fd) as sock:
        while True:
            job = _receive(sock)
            if job is None:
                return
            try:
                sock.sendall(HEADER.pack(len(outcome := _outcome(job, functions))))
                sock.sendall(outcome)
            except OSError:
                return


def _outcome(job: bytes, functions: dict[tuple[str, str], Callable[..., Any]]) -> bytes:
    qualname = "?"
    try:
        path, module, qualname, args, kwargs = pickle.loads(job)
        if path != sys.path:  # the server imported from somewhere new since
            sys.path[:] = path
        fn = functions.get((module, qualname))
        if fn is None:
            fn = functions[module, qualname] = _resolve(module, qualname)
        result = fn(*args, **kwargs)
    except BaseException as exc:
        return _failure(exc)
    try:
        return pickle.dumps((True, result), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        return _failure(
            EncodeError(f"the result of {qualname} cannot leave its worker process: {exc}")
        )


def _resolve(module: str, qualname: str) -> Callable[..., Any]:
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    if getattr(type(found), "runs_as_atask", False):  # an atask: its function
        return found.fn  # type: ignore[no-any-return]
    if not callable(found):
        raise TypeError(f"{module}.{qualname} is not a function")
    return found  # type: ignore[no-any-return]


def _failure(exc: BaseException) -> bytes:
    """A failed outcome: the exception itself if it survives pickling, else a ``RemoteError``;
    either way with the worker's traceback as a note."""
    if not isinstance(exc, Exception):  # SystemExit and the like must not stop the server
        error = RuntimeError(f"{type_name(exc)} in a worker process: {_text(exc)}")
        error.__cause__ = exc
        exc = error
    assert isinstance(exc, Exception)
    formatted = "".join(traceback.format_exception(exc)).rstrip("\n")
    exc.add_note(f"Traceback in worker process {os.getpid()}:\n{formatted}")
    try:
        data = pickle.dumps((False, exc), pickle.HIGHEST_PROTOCOL)
        pickle.loads(data)  # some exceptions pickle but do not unpickle
        return data
    except Exception:
        fallback = RemoteError(type_name(exc), _text(exc), formatted)
        return pickle.dumps((False, fallback), pickle.HIGHEST_PROTOCOL)


def _text(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<unprintable {type(exc).__name__}>"


def _receive(sock: socket.socket) -> bytes | None:
    header = _exactly(sock, HEADER.size)
    if header is None:
        return None
    return _exactly(sock, HEADER.unpack(header)[0])


def _exactly(sock: socket.socket, size: int) -> bytes | None:
    """``size`` bytes, or ``None`` at the end of the stream."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    got = 0
    while got < size:
        count = sock.recv_into(view[got:])
        if count == 0:
            return None
        got += count
    return bytes(buffer)
