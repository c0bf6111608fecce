"""django_atasks in a process where Django is set up (sqlite): ``on_commit``, the
``CloseOldConnections`` middleware and ``settings.ATASKS``."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import django
import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from servers import delete_queues

import atasks
import django_atasks
from atasks.errors import ConfigurationError
from django_atasks.conf import apply

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module", autouse=True)
def django_db(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Django, set up once in this process, with a sqlite file and a table of orders."""
    if not settings.configured:
        database = tmp_path_factory.mktemp("django") / "db.sqlite3"
        settings.configure(
            INSTALLED_APPS=["django_atasks"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": database}},
            USE_TZ=True,
        )
        django.setup()
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS orders (name TEXT)")
    connection.close()


seen: list[tuple[str, int]] = []
arrived: list[asyncio.Event] = []  # the one of the test running


@pytest.fixture(autouse=True)
def fresh() -> None:
    seen.clear()
    arrived[:] = [asyncio.Event()]


def _orders() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM orders")
        count: int = cursor.fetchone()[0]
        return count


@atasks.atask
async def order_placed(name: str) -> None:
    """Records the order's name and how many orders the database has when the atask runs."""
    seen.append((name, await sync_to_async(_orders)()))
    arrived[0].set()


def place(name: str, *, fail: bool) -> None:
    """In a transaction: insert an order and send ``order_placed`` at commit."""
    with transaction.atomic():
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO orders VALUES (%s)", [name])
        django_atasks.on_commit(order_placed, name)
        if fail:
            raise RuntimeError("rolled back")


async def test_on_commit_sends_after_the_commit_and_never_on_rollback(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    await django_atasks.setup(transport_kind, url=url, serve=True)
    if url is not None:
        request.addfinalizer(lambda: asyncio.run(delete_queues(url, sys.modules[__name__])))
    before = await sync_to_async(_orders)()
    with pytest.raises(RuntimeError, match="rolled back"):
        await sync_to_async(place)("lost", fail=True)
    await sync_to_async(place)("kept", fail=False)
    async with asyncio.timeout(30):
        await arrived[0].wait()
    # Sent once committed: the atask sees its row. The rolled-back one was never sent.
    assert seen == [("kept", before + 1)]
    assert await sync_to_async(_orders)() == before + 1


async def test_outside_a_transaction_on_commit_sends_at_once() -> None:
    await django_atasks.setup("loopback")
    await sync_to_async(django_atasks.on_commit)(order_placed, "now")
    async with asyncio.timeout(10):
        await arrived[0].wait()
    assert [name for name, _ in seen] == ["now"]


async def test_on_commit_without_a_loop_to_send_through_fails_at_once() -> None:
    await atasks.close()
    django_atasks.calls._loop = None
    with pytest.raises(ConfigurationError, match=r"await django_atasks.setup\(\)"):
        await sync_to_async(django_atasks.on_commit)(order_placed, "x")
    with pytest.raises(TypeError, match="sends an atask"):
        django_atasks.on_commit(print, "x")  # type: ignore[arg-type]


connections: list[Any] = []


def _the_connection() -> Any:
    connection.ensure_connection()
    return connection.connection


@atasks.atask
async def which_connection() -> None:
    connections.append(await sync_to_async(_the_connection)())


async def test_served_atasks_do_not_keep_old_connections() -> None:
    """With CONN_MAX_AGE 0 (Django's default) a request's connection is closed after it; so is
    an atask's under ``django_atasks.setup()``, and not under a plain ``atasks.setup()``."""
    await django_atasks.setup("loopback")
    connections.clear()
    await which_connection()
    await which_connection()
    assert connections[0] is not connections[1]
    await atasks.close()
    await atasks.setup("loopback")
    connections.clear()
    await which_connection()
    await which_connection()
    assert connections[0] is connections[1]  # what the middleware is for


@atasks.atask
def which_connection_in_its_thread() -> None:
    """A plain-def atask: it runs in a worker thread, whose connection is its own."""
    connections.append((threading.get_ident(), _the_connection()))


async def test_plain_def_atasks_do_not_keep_old_connections_in_their_threads() -> None:
    """The worker thread of a plain-def atask is reused by the next; under
    ``django_atasks.setup()`` the connection it opened is closed after it, as a request's."""
    loop = asyncio.get_running_loop()
    loop.set_default_executor(ThreadPoolExecutor(1))  # one thread: every call runs in it
    await django_atasks.setup("loopback")
    connections.clear()
    await which_connection_in_its_thread()
    await which_connection_in_its_thread()
    (thread, first), (same_thread, second) = connections
    assert thread == same_thread
    assert first is not second
    await atasks.close()
    await atasks.setup("loopback")
    connections.clear()
    await which_connection_in_its_thread()
    await which_connection_in_its_thread()
    assert connections[0] == connections[1]  # what the middleware is for, in that thread too


def unset(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    """Unset ``names`` for one test, and unset them again after it (``apply`` sets them)."""
    for name in names:
        monkeypatch.setenv(name, "")  # remembered as it was, so that undo restores it
        monkeypatch.delenv(name)


def test_settings_atasks_become_the_variables_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    unset(monkeypatch, "ATASKS_URL", "ATASKS_CONCURRENCY", "ATASKS_SERVE", "ATASKS_SECRET")
    monkeypatch.setenv("ATASKS_CODEC", "json")
    config = {
        "url": "amqp://guest:guest@127.0.0.1:5672/",
        "concurrency": 7,
        "serve": False,
        "key": [b"new", "old"],
        "codec": "pickle",  # the environment wins
        "processes": None,  # as if not there
    }
    assert apply(config) == {
        "ATASKS_URL": "amqp://guest:guest@127.0.0.1:5672/",
        "ATASKS_CONCURRENCY": "7",
        "ATASKS_SERVE": "0",
        "ATASKS_SECRET": "new,old",
    }
    assert atasks.settings.value("concurrency") == 7
    assert atasks.settings.value("serve") is False
    assert atasks.settings.value("codec") == "json"
    assert os.environ["ATASKS_SECRET"] == "new,old"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"concurency": 7}, "settings.ATASKS['concurency']: not a setting of atasks; use one of"),
        ({"concurrency": 0}, "settings.ATASKS['concurrency'] = 0: "),
        ({"key": ["good", ""]}, "settings.ATASKS['key'] = ...: key 2 of 2 is empty"),
        (["url"], "settings.ATASKS must be a dict, not list"),
    ],
)
def test_a_bad_settings_atasks_is_named(
    config: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    unset(monkeypatch, "ATASKS_CONCURRENCY", "ATASKS_SECRET")
    with pytest.raises(ImproperlyConfigured) as raised:
        apply(config)
    assert str(raised.value).startswith(message)
    assert "good" not in str(raised.value)
    assert "ATASKS_CONCURRENCY" not in os.environ


def test_on_commit_in_a_synchronous_process_sends_through_setup_blocking() -> None:
    """A WSGI process: no event loop of its own, atasks in setup_blocking's background loop."""
    django_atasks.calls._loop = None
    atasks.setup_blocking("loopback")
    try:
        place("blocking", fail=False)
        atasks.run_sync(arrived[0].wait(), timeout=10)  # set in the background loop
        assert [name for name, _ in seen] == ["blocking"]
    finally:
        atasks.close_blocking()
