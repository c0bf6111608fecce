"""Fixtures: clean namespaces per test, a private RabbitMQ node per session and broker, a
3-node cluster per test module and broker, and ``served``, which sets up the default namespace
over loopback or AMQP so behaviour tests run on both.

Every test that uses a broker (``rabbit``, ``amqp_url``, ``rabbit_factory``, ``rabbit_cluster``,
or ``served`` over AMQP) runs once per broker in ``ATASKS_BROKERS``: ``3``, ``4`` or ``3,4``
(the default). ``rabbitmq3`` is Debian's rabbitmq-server on this machine; ``rabbitmq4`` is
Debian sid's, in the root directory that dev/rabbitmq4.py builds (``$ATASKS_RABBITMQ4_ROOT``,
or its cache).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

import atasks
from atasks.router import Router

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # dev/, for rabbitnode

import rabbitmq4
import workload
from rabbitcluster import RabbitCluster
from servers import Servers, delete_queues

from atasks.testing.rabbitnode import RabbitNode

REPO = Path(__file__).resolve().parents[2]
TEST_SECRET = "atasks-test-key"
"""Every test process and the servers it starts sign pickle with this key (``ATASKS_SECRET``):
over a broker, unsigned pickle is refused. A test about unsigned pickle removes it."""
os.environ.setdefault("ATASKS_SECRET", TEST_SECRET)
BROKERS = {"3": "rabbitmq3", "4": "rabbitmq4"}  # ATASKS_BROKERS's values, and test ids
_versions: dict[str, str] = {}  # broker -> the version its node announced, for the summary


def _brokers() -> list[str]:
    """The brokers chosen by ATASKS_BROKERS."""
    wanted = os.environ.get("ATASKS_BROKERS", "3,4").replace(",", " ").split()
    if not wanted or set(wanted) - BROKERS.keys():
        raise pytest.UsageError(f"ATASKS_BROKERS={' '.join(wanted)!r}: say 3, 4 or 3,4")
    return [name for key, name in BROKERS.items() if key in wanted]


def pytest_configure(config: pytest.Config) -> None:
    _brokers()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Each test using a broker, once per broker; ``served`` tests also once over loopback.
    Session scope: pytest groups the tests by broker, so one node runs at a time."""
    brokers = _brokers()
    if "transport_kind" in metafunc.fixturenames:
        params = [pytest.param(None, id="loopback")]
        params += [pytest.param(name, id=f"amqp-{name}") for name in brokers]
        metafunc.parametrize("broker", params, scope="session")
    elif "broker" in metafunc.fixturenames:
        metafunc.parametrize("broker", brokers, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """``ATASKS_BROKER_TESTS_ONLY=1`` keeps only the tests that run on a broker: dev/test.sh runs
    the 4.x ones in a process of their own beside the rest, so CI takes half the time."""
    if os.environ.get("ATASKS_BROKER_TESTS_ONLY") != "1":
        return
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        (keep if callspec is not None and callspec.params.get("broker") else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def broker_root(broker: str) -> Path | None:
    """The root directory of the broker's node: None for the system's."""
    if broker == "rabbitmq3":
        return None
    root = rabbitmq4.find()
    if root is None:
        where = os.environ.get("ATASKS_RABBITMQ4_ROOT") or rabbitmq4.default_path()
        pytest.fail(
            f"no RabbitMQ 4.x root at {where}: build it with `python3 dev/rabbitmq4.py` (as root; "
            "./dev/test.sh does it), or run only the 3.x tests with ATASKS_BROKERS=3",
            pytrace=False,
        )
    return root


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _versions:
        terminalreporter.write_sep("-", "brokers the tests ran on")
    for broker, version in _versions.items():
        terminalreporter.write_line(f"{broker}: RabbitMQ {version}")


@pytest.fixture(autouse=True)
async def clean_namespaces() -> AsyncIterator[None]:
    atasks.reset()
    yield
    await atasks.close(grace=1)


def _announce(config: pytest.Config, line: str) -> None:
    """Write ``line`` to the terminal as the tests run, so that it shows in CI's log."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capture = config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)


@pytest.fixture(scope="session")
def rabbit(broker: str | None, pytestconfig: pytest.Config) -> Iterator[RabbitNode]:
    """A private node of the ``broker`` on a free loopback port, for the whole session."""
    assert broker is not None, "a loopback test asked for a broker"
    node = RabbitNode(root=broker_root(broker))
    try:
        took = node.start()
        _versions[broker] = str(node.version)
        _announce(pytestconfig, f"{broker}: RabbitMQ {node.version} up in {took:.1f}s")
        yield node
    finally:
        node.close()


@pytest.fixture(scope="module")
def _module_cluster(broker: str, pytestconfig: pytest.Config) -> Iterator[RabbitCluster]:
    cluster = RabbitCluster(root=broker_root(broker))
    try:
        took = cluster.start()
        _versions[broker] = str(cluster.version)
        _announce(
            pytestconfig,
            f"{broker}: {len(cluster.nodes)}-node cluster of RabbitMQ {cluster.version} "
            f"up in {took:.1f}s",
        )
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def rabbit_cluster(_module_cluster: RabbitCluster) -> RabbitCluster:
    """A cluster of 3 private nodes of the ``broker``, shared by the tests of a module (it
    takes some 10s to form). Each test gets it with every node running in it and no queue left
    by an earlier test; it may kill and restart nodes."""
    import aio_pika

    cluster = _module_cluster
    for index, node in enumerate(cluster.nodes):
        if not node.running:  # left down by a test that failed
            await asyncio.to_thread(cluster.restart, index)
    # A node may still be restarting its broker to rejoin (after a partition, autoheal).
    await asyncio.to_thread(cluster.await_all_running)
    listed = await asyncio.to_thread(
        cluster.nodes[0].ctl, "list_queues", "name", "--formatter", "json"
    )
    connection = await aio_pika.connect(cluster.nodes[0].url)
    async with connection:
        channel = await connection.channel()
        for queue in json.loads(listed):
            await channel.queue_delete(queue["name"])
    return cluster


@pytest.fixture
def rabbit_factory(broker: str) -> Iterator[Callable[[Path], RabbitNode]]:
    """Makes nodes of the ``broker``, not yet started, each with its log in the directory it is
    given; closes them after the test."""
    nodes: list[RabbitNode] = []

    def make(base_dir: Path) -> RabbitNode:
        nodes.append(RabbitNode(base_dir, root=broker_root(broker)))
        return nodes[-1]

    yield make
    for node in nodes:
        node.close()


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


@pytest.fixture
def transport_kind(broker: str | None) -> str:
    """``loopback``, or ``amqp`` on the ``broker`` (see pytest_generate_tests)."""
    return "loopback" if broker is None else "amqp"


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


@pytest.fixture
def unsigned_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """No key (the tests run with ``TEST_SECRET``): unsigned pickle, allowed over a broker by
    the explicit opt-in. Ask for it before ``served``."""
    monkeypatch.delenv("ATASKS_SECRET", raising=False)
    monkeypatch.setenv("ATASKS_INSECURE_PICKLE", "1")
