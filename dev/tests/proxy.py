"""A TCP relay on 127.0.0.1 in front of a broker, which can cut every connection through it at
once, abruptly, as a failing network or a proxy would."""

from __future__ import annotations

import asyncio
import contextlib


class Proxy:
    """``async with Proxy(broker_port) as proxy:`` connect to ``proxy.url``; ``proxy.cut()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.tried = 0  # connections attempted through it, the refused ones included
        self.refusing = False  # while set, new connections are cut at once
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._pipes: set[asyncio.Task[None]] = set()
        self._accepted = asyncio.Condition()

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    async def __aenter__(self) -> Proxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        self.cut()
        for pipe in list(self._pipes):
            pipe.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> int:
        """Abort every connection through the proxy; returns how many there were."""
        links, self._links = self._links, set()
        for writer in links:
            writer.transport.abort()
        return len(links) // 2

    async def wait_tried(self, count: int) -> None:
        """Until ``count`` connections were attempted through it, in all."""
        async with self._accepted:
            await self._accepted.wait_for(lambda: self.tried >= count)

    async def wait_accepted(self, count: int) -> None:
        """Until ``count`` connections have come through, in all."""
        async with self._accepted:
            await self._accepted.wait_for(lambda: self.accepted >= count)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with self._accepted:
            self.tried += 1
            self._accepted.notify_all()
        if self.refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, up_writer}
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            pipe = asyncio.ensure_future(_pipe(source, sink))
            self._pipes.add(pipe)
            pipe.add_done_callback(self._pipes.discard)
        async with self._accepted:
            self.accepted += 1
            self._accepted.notify_all()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()
    sink.transport.abort()
