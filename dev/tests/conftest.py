"""Fixtures: clean namespaces per test, a private RabbitMQ node per session, and ``served``,
which sets up the default namespace over loopback or AMQP so behaviour tests run on both."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

import atasks
from atasks.router import Router

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dev/, for rabbitnode

import workload
from rabbitnode import RabbitNode
from servers import Servers, delete_queues

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
async def clean_namespaces() -> AsyncIterator[None]:
    atasks.reset()
    yield
    await atasks.close(grace=1)


@pytest.fixture(scope="session")
def rabbit() -> Iterator[RabbitNode]:
    """A private RabbitMQ node on a free loopback port, for the whole session."""
    with RabbitNode() as node:
        yield node


@pytest.fixture
def amqp_url(rabbit: RabbitNode) -> str:
    if not rabbit.running:
        rabbit.start()
    return rabbit.url


@pytest.fixture
async def servers(amqp_url: str, tmp_path: Path) -> AsyncIterator[Servers]:
    """``atasks run`` server processes serving dev/tests/workload.py; stopped, and their queues
    deleted, after the test. Their logs are printed, for when the test fails."""
    started = Servers(amqp_url, tmp_path)
    yield started
    started.stop_all()
    await delete_queues(amqp_url, workload)
    for index in range(len(started.processes)):
        print(f"--- server {index} ---\n{started.log(index)[-5000:]}")


@pytest.fixture(params=["loopback", "amqp"])
def transport_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _serve(request: pytest.FixtureRequest, kind: str, concurrency: int) -> Router:
    url = request.getfixturevalue("amqp_url") if kind == "amqp" else None
    return await atasks.setup(kind, url=url, serve=True, concurrency=concurrency)


@pytest.fixture
async def served(request: pytest.FixtureRequest, transport_kind: str) -> Router:
    """The default namespace, serving its atasks in this process, over each transport."""
    return await _serve(request, transport_kind, 64)


@pytest.fixture
async def served_serially(request: pytest.FixtureRequest, transport_kind: str) -> Router:
    """Like ``served``, running one atask at a time."""
    return await _serve(request, transport_kind, 1)
