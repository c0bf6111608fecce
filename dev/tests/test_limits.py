"""Limits: oversize messages fail alone and clearly; connect failures say why, in one line."""

from __future__ import annotations

import asyncio
import socket

import pytest
import workload
from servers import Servers, wait_until_served

import atasks
from atasks.errors import EncodeError, TransportError
from atasks.testing.rabbitnode import RabbitNode
from atasks.transport.backends.amqp import AMQPTransport

MIB = 1024 * 1024


async def test_an_oversize_argument_fails_alone(servers: Servers, amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url)
    servers.start()
    await wait_until_served(workload.ready)
    others = [asyncio.ensure_future(workload.slow_pid(0.5)) for _ in range(20)]
    with pytest.raises(EncodeError, match=r"1363149\d\d bytes, over the \d+-byte message size"):
        await workload.length(b"x" * (130 * MIB))
    assert len(set(await asyncio.wait_for(asyncio.gather(*others), 60))) == 1


async def test_an_oversize_result_is_a_clear_error_and_the_server_carries_on(
    servers: Servers, amqp_url: str
) -> None:
    await atasks.setup("amqp", url=amqp_url)
    server = servers.start("--max-message-size", "100000")
    await wait_until_served(workload.ready)
    with pytest.raises(EncodeError, match=r"result is 2000\d\d bytes, over the 100000-byte"):
        await asyncio.wait_for(workload.blob(200_000), 30)
    assert await workload.blob(10) == b"x" * 10
    assert server.poll() is None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def connect_error(url: str) -> str:
    transport = AMQPTransport(url, namespace=None, connect_timeout=2)
    with pytest.raises(TransportError) as raised:
        await transport.connect()
    message = str(raised.value)
    assert "\n" not in message
    assert "guest:guest" not in message  # no password in messages
    return message


async def test_connect_failures_name_their_cause(rabbit: RabbitNode) -> None:
    refused = await connect_error(f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    assert "connection refused" in refused
    with socket.socket() as silent:  # accepts, never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert "timed out after 2s" in await connect_error(f"amqp://guest:guest@127.0.0.1:{port}/")
    wrong = await connect_error(f"amqp://guest:wrong@127.0.0.1:{rabbit.port}/")
    assert "access refused" in wrong
    vhost = await connect_error(f"amqp://guest:guest@127.0.0.1:{rabbit.port}/nowhere")
    assert "virtual host 'nowhere'" in vhost
