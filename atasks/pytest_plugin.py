"""pytest fixtures for code that uses atasks, loaded by pytest once atasks is installed (entry
point ``pytest11``), with nothing to configure:

- ``atasks_loopback``: the default namespace set up over loopback, serving its atasks in the
  test's process; closed after the test. Async: needs pytest-asyncio.
- ``atasks_rabbitmq``: the URL of a private RabbitMQ node (Debian's rabbitmq-server package, run
  as the user, on a free port of 127.0.0.1), started at the first test that asks for it and
  stopped at the end of the session.
- ``atasks_server``: a factory, ``await atasks_server("app.py", url)``, that runs
  ``atasks run app.py --mode server --url URL`` in a subprocess and returns once it serves and
  answers a ping; each server is stopped by its PID after the test.

Nothing here runs, and nothing heavy is imported, unless a test asks for one of them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from atasks.router import Router
    from atasks.testing.server import ServerProcess

try:
    import pytest_asyncio
except ImportError:  # pragma: no cover - its fixture says what is missing
    pytest_asyncio = None  # type: ignore[assignment]

ServerFactory = Callable[..., Awaitable["ServerProcess"]]
"""``atasks_server(target, url, *args, namespace="default", within=60.0)``."""


async def _loopback() -> AsyncIterator[Router]:
    import atasks
    from atasks.handlers import forget_instances

    atasks.reset()
    forget_instances()
    router = await atasks.setup("loopback", serve=True)
    try:
        yield router
    finally:
        await atasks.close(grace=1)
        atasks.reset()
        forget_instances()


if pytest_asyncio is not None:
    atasks_loopback = pytest_asyncio.fixture(_loopback, name="atasks_loopback")
else:  # pragma: no cover

    @pytest.fixture(name="atasks_loopback")
    def _no_asyncio() -> None:
        pytest.fail("atasks_loopback is an async fixture: pip install pytest-asyncio")


@pytest.fixture(scope="session")
def atasks_rabbitmq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The AMQP URL of a private RabbitMQ node for the whole session."""
    from atasks.testing.rabbitnode import RABBIT_BIN, RabbitNode

    if not (RABBIT_BIN / "rabbitmq-server").exists():
        pytest.fail(
            f"atasks_rabbitmq runs Debian's rabbitmq-server, and {RABBIT_BIN} has none: "
            "apt-get install rabbitmq-server (its system service need not run)",
            pytrace=False,
        )
    node = RabbitNode(tmp_path_factory.mktemp("atasks-rabbitmq"))
    try:
        node.start()
        yield node.url
    finally:
        node.close()


@pytest.fixture
def atasks_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerFactory]:
    """Start ``atasks run TARGET --mode server`` processes; stop them all after the test."""
    from atasks.testing.server import ServerProcess

    started: list[ServerProcess] = []

    async def start(
        target: str, url: str, *args: str, namespace: str = "default", within: float = 60.0
    ) -> ServerProcess:
        log_dir = tmp_path_factory.mktemp("atasks-server")
        server = ServerProcess(target, url, log_dir / "server.log", args)
        started.append(server)
        server.start()
        await server.wait_ready(namespace, within)
        return server

    yield start
    for server in started:
        server.stop()


__all__ = ["ServerFactory", "atasks_loopback", "atasks_rabbitmq", "atasks_server"]
