"""The HTTP endpoints of ``atasks run`` for the machines around a server: ``/livez`` and
``/readyz`` (``--health-port``), ``/metrics`` (``--metrics-port``).

A few GET routes need no framework: ``asyncio.start_server``, one request per connection, the
request's head bounded in size and time so that a stuck or hostile client holds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping

log = logging.getLogger("atasks.endpoints")

Answer = tuple[int, str, bytes]
"""An HTTP status, content type and body."""
Route = Callable[[], Awaitable[Answer]]

HEAD_LIMIT = 8192
READ_WITHIN = 5.0
ANSWER_WITHIN = 10.0
REASONS = {200: "OK", 404: "Not Found", 405: "Method Not Allowed", 503: "Service Unavailable"}
TEXT = "text/plain; charset=utf-8"


async def serve_endpoints(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    """Serve ``routes`` (path → answer) on ``host:port``; close the returned server to stop."""

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            answer, head_only = await _answer(reader, routes)
            status, content_type, body = answer
            writer.write(
                f"HTTP/1.1 {status} {REASONS.get(status, '')}\r\n"
                f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            if not head_only:
                writer.write(body)
            async with asyncio.timeout(READ_WITHIN):
                await writer.drain()
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # the client went away or stalled: nothing to answer
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(READ_WITHIN):
                    await writer.wait_closed()

    return await asyncio.start_server(on_client, host, port, limit=HEAD_LIMIT)


async def _answer(reader: asyncio.StreamReader, routes: Mapping[str, Route]) -> tuple[Answer, bool]:
    async with asyncio.timeout(READ_WITHIN):
        head = await reader.readuntil(b"\r\n\r\n")
    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    path = rest.partition(" ")[0].partition("?")[0]
    if method not in ("GET", "HEAD"):
        return (405, TEXT, b"GET or HEAD only\n"), False
    route = routes.get(path)
    if route is None:
        return (404, TEXT, f"no {path}: try {', '.join(sorted(routes))}\n".encode()), False
    try:
        async with asyncio.timeout(ANSWER_WITHIN):
            return await route(), method == "HEAD"
    except Exception as exc:  # a failing route says so, with a 503: never a hang
        log.warning("%s failed: %s", path, exc)
        return (503, TEXT, f"{path} failed: {exc}\n".encode()), method == "HEAD"
