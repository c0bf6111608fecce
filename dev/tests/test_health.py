"""``atasks run --health-port``: ``/livez`` answers while the loop runs; ``/readyz`` is 200 only
once the server consumes its queues, 503 while its broker connection is lost, 200 again once it
is back. The endpoints themselves: routes, bad requests, stalled clients."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from proxy import Proxy
from servers import Servers

from atasks.endpoints import TEXT, serve_endpoints
from atasks.health import Endpoints
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.loopback import LoopbackTransport

pytestmark = pytest.mark.timeout(90)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    """``method path`` on 127.0.0.1:``port``: the status and body; (0, why) when refused."""
    try:
        async with asyncio.timeout(5):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
            raw = await reader.read()
            writer.close()
    except OSError as exc:
        return 0, str(exc)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode()


async def status_becomes(port: int, path: str, status: int, within: float = 30) -> str:
    """Poll until ``path`` answers ``status``; its body."""
    async with asyncio.timeout(within):
        while True:
            got, body = await get(port, path)
            if got == status:
                return body
            await asyncio.sleep(0.05)


async def test_routes_answer_and_readiness_follows_the_server() -> None:
    endpoints = Endpoints()
    port = free_port()
    await endpoints.start("127.0.0.1", port, None)
    try:
        assert await get(port, "/livez") == (200, "alive\n")
        assert await get(port, "/readyz") == (503, "not ready: starting: not serving yet\n")
        transport = LoopbackTransport(namespace=None)
        endpoints.health.transports = [transport]
        endpoints.health.serving = True
        assert await get(port, "/readyz?verbose") == (200, "ready\n")
        assert await get(port, "/readyz", "HEAD") == (200, "")
        status, body = await get(port, "/metrics")
        assert status == 404
        assert "/livez" in body
        assert (await get(port, "/livez", "POST"))[0] == 405
        endpoints.health.stopping = True
        assert await get(port, "/readyz") == (503, "not ready: stopping\n")
    finally:
        await endpoints.stop()
    assert (await get(port, "/livez"))[0] == 0  # closed


async def test_a_stalled_client_holds_nothing_up() -> None:
    async def ok() -> tuple[int, str, bytes]:
        return 200, TEXT, b"ok"

    async def broken() -> tuple[int, str, bytes]:
        raise RuntimeError("no data")

    server = await serve_endpoints("127.0.0.1", 0, {"/ok": ok, "/broken": broken})
    port = server.sockets[0].getsockname()[1]
    try:
        _, stalled = await asyncio.open_connection("127.0.0.1", port)
        stalled.write(b"GET /ok HTTP/1.1\r\n")  # and never the end of its head
        assert await get(port, "/ok") == (200, "ok")
        assert await get(port, "/broken") == (503, "/broken failed: no data\n")
        _, huge = await asyncio.open_connection("127.0.0.1", port)
        huge.write(b"GET /" + b"x" * 20_000 + b" HTTP/1.1\r\n\r\n")  # over the head's limit
        assert await get(port, "/ok") == (200, "ok")
        stalled.close()
        huge.close()
    finally:
        server.close()
        await server.wait_closed()


async def test_readiness_of_a_served_broker_connection(
    rabbit: RabbitNode, amqp_url: str, tmp_path: Path
) -> None:
    servers = Servers(amqp_url, tmp_path)
    port = free_port()
    nowhere = free_port()  # nothing listens there: a broker that is not up
    try:
        async with Proxy(nowhere) as proxy:
            servers.url = proxy.url
            servers.start("--health-port", str(port), "--connect-timeout", "60")
            # alive while it waits for its broker, and not ready
            await status_becomes(port, "/livez", 200)
            status, body = await get(port, "/readyz")
            assert (status, body) == (503, "not ready: starting: not serving yet\n")
            assert "serving; SIGINT" not in servers.log(0)

            proxy.target_port = rabbit.port  # the broker comes up
            await status_becomes(port, "/readyz", 200)
            assert "serving; SIGINT" in servers.log(0)  # ready once it consumes, not before

            proxy.target_port = nowhere  # the broker goes away, and stays away a while
            assert proxy.cut()
            body = await status_becomes(port, "/readyz", 503, within=10)
            assert "lost its broker" in body
            assert (await get(port, "/livez"))[0] == 200
            async with asyncio.timeout(20):
                await proxy.wait_tried(proxy.tried + 2)  # it tried twice, and is still unready
            assert (await get(port, "/readyz"))[0] == 503

            proxy.target_port = rabbit.port  # back
            await status_becomes(port, "/readyz", 200, within=20)
            assert "reconnected to the broker" in servers.log(0)
    finally:
        servers.stop_all()
