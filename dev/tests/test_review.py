"""Bugs found in review (issue 11), one test or more each; each failed before its fix."""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import re
import signal
import warnings
from pathlib import Path

import pytest
import workload
from conftest import REPO
from servers import Servers, wait_until_served

import atasks
from atasks import atask, errors
from atasks.calls import new_call_id
from atasks.codecs import PickleCodec
from atasks.events import Progress
from atasks.namespaces import namespaces
from atasks.router import Router
from atasks.transport.base import Reply, Request


def _session_processes(session: int) -> list[tuple[int, int]]:
    """(pid, parent pid) of every live process in ``session``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()
        state, parent, sid = fields[0], int(fields[1]), int(fields[3])
        if sid == session and state != "Z":
            found.append((int(entry.name), parent))
    return found


@pytest.mark.timeout(90)
async def test_atasks_workers_in_the_environment_starts_workers_not_supervisors(
    servers: Servers, amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ATASKS_WORKERS=2 atasks run ...: each worker inherited the variable and supervised two
    workers of its own, and so on (a fork bomb)."""
    monkeypatch.setenv("ATASKS_WORKERS", "2")
    supervisor = servers.start()
    monkeypatch.delenv("ATASKS_WORKERS")
    await atasks.setup("amqp", url=amqp_url)
    await wait_until_served(workload.ready)
    async with asyncio.timeout(30):  # both workers started
        while len(_session_processes(supervisor.pid)) < 3:
            await asyncio.sleep(0.05)
    tree = _session_processes(supervisor.pid)
    assert len(tree) == 3, tree
    assert sorted(parent for _, parent in tree if parent == supervisor.pid) == [supervisor.pid] * 2
    supervisor.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(supervisor.wait, 30) == 0


def test_call_ids_differ_after_fork() -> None:
    """The id prefix was made at import: a forked child issued its parent's ids."""
    new_call_id()
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork() with threads, 3.12+
        pid = os.fork()
    if pid == 0:  # the child: report one id and leave at once
        try:
            os.write(write, new_call_id().encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        child = os.read(read, 200).decode()
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    parent = new_call_id()
    assert child != parent
    assert child[:16] != parent[:16]


@atask(name="review.sleeper")
async def sleeper(seconds: float) -> str:
    await asyncio.sleep(seconds)
    return "slept"


@pytest.mark.timeout(60)
async def test_a_reused_call_id_that_was_cancelled_gets_an_answer(
    amqp_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ids repeat no more after fork (above); a repeat must still never leave a caller hanging."""
    await atasks.setup("amqp", url=amqp_url, serve=True)
    monkeypatch.setattr("atasks.call_side.new_call_id", lambda: "review-reused-id")
    first = asyncio.ensure_future(sleeper(10))
    await asyncio.sleep(0.3)  # running on the server
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.sleep(0.3)  # the server has seen the cancellation
    async with asyncio.timeout(5):
        with pytest.raises(atasks.ATasksError):
            await sleeper(0)


@atask(namespace="no-codec")
async def needs_a_codec() -> str:
    return "decoded"


async def test_a_server_without_a_codec_answers_no_codec_registered(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    """Its router raised instead of answering: over AMQP the request stayed unacked and the
    caller waited forever."""
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    from atasks.lifecycle import make_transport

    transport = make_transport(transport_kind, namespace="no-codec", url=url)
    await transport.connect()
    await Router(namespace="no-codec").activate(transport)  # no codec in "no-codec"
    client = Router(namespace="no-codec-client", codec=PickleCodec(None), transport=transport)
    with pytest.raises(errors.NoCodecRegistered, match="no codec"):
        await asyncio.wait_for(client.call(needs_a_codec, (), {}), 10)


def test_replacing_an_amqp_transport_names_both(caplog: pytest.LogCaptureFixture) -> None:
    """The conflict error was an AttributeError from the new transport's own repr."""
    from atasks.transport.backends.amqp import AMQPTransport

    AMQPTransport("amqp://guest:guest@127.0.0.1:1/")
    newest = AMQPTransport("amqp://guest:guest@127.0.0.1:2/")
    assert atasks.get_transport() is newest
    assert re.search(r"AMQPTransport\(.*:1/.*replaced by AMQPTransport\(.*:2/", caplog.text)


async def test_set_up_that_cannot_connect_changes_nothing() -> None:
    """After a failed connect the namespace stayed bound to the dead transport."""
    before = atasks.LoopbackTransport()
    with pytest.raises(errors.TransportError):
        await atasks.setup("amqp", url="amqp://guest:guest@127.0.0.1:1/", connect_timeout=5)
    assert atasks.get_transport() is before
    with pytest.raises(errors.NoCodecRegistered):
        atasks.get_codec()


async def test_a_listener_that_raises_does_not_fail_the_call(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    """Over loopback it failed the remote atask; over AMQP it was logged. Both log it now."""

    def broken(progress: Progress) -> None:
        raise RuntimeError("listener broke")

    async with atasks.observe_progress(broken):
        assert await workload.count_up(2) == 2
    async with asyncio.timeout(5):  # over AMQP the reports may trail the reply
        while caplog.text.count("listener broke") < 2:
            await asyncio.sleep(0.01)


async def _observe_async(reports: list[Progress]) -> None:
    async def listener(progress: Progress) -> None:
        await asyncio.sleep(0)
        reports.append(progress)

    async with atasks.observe_progress(listener):
        assert await workload.count_up(3) == 3
    async with asyncio.timeout(5):
        while len(reports) < 3:
            await asyncio.sleep(0.01)


async def test_an_async_listener_is_awaited_over_loopback() -> None:
    """An async listener's coroutine was never awaited."""
    await atasks.setup("loopback")
    reports: list[Progress] = []
    await _observe_async(reports)
    assert [p.done for p in reports] == [1, 2, 3]


@pytest.mark.timeout(30)
async def test_an_async_listener_is_awaited_over_amqp(amqp_url: str) -> None:
    await atasks.setup("amqp", url=amqp_url, serve=True)
    reports: list[Progress] = []
    await _observe_async(reports)
    assert [p.done for p in reports] == [1, 2, 3]


def test_looking_up_an_unknown_namespace_creates_none() -> None:
    with pytest.raises(errors.NoCodecRegistered):
        atasks.get_codec("typo")
    with pytest.raises(errors.NoClientTransportRegistered):
        atasks.get_transport("typo")
    atasks.reset("typo")
    assert "typo" not in {ns.name for ns in namespaces()}


def test_every_error_is_exported() -> None:
    classes = {
        name
        for name, value in vars(errors).items()
        if isinstance(value, type) and issubclass(value, Exception)
    }
    assert classes <= set(atasks.__all__)
    readme = (REPO / "docs/guides/basics.md").read_text()
    start = readme.index("\nATasksError\n")
    tree = readme[start : readme.index("```", start)]
    assert set(re.findall(r"\b[A-Z][A-Za-z]+\b", tree)) <= set(atasks.__all__)


def test_an_unknown_atask_option_is_an_error() -> None:
    """It was silently ignored."""
    with pytest.raises(TypeError, match="unknown @atask option retries"):
        atask(retries=3)  # type: ignore[call-overload]
    with pytest.raises(TypeError, match="name, namespace, timeout"):
        atask(name="x", priority=1, queue="q")  # type: ignore[call-overload]


def test_an_atask_is_a_coroutine_function() -> None:
    """inspect.iscoroutinefunction(atask) was False: frameworks took atasks for sync."""

    @atask(name="review.plain", namespace="review")
    def plain(x: int) -> int:
        return x

    assert inspect.iscoroutinefunction(sleeper)
    assert inspect.iscoroutinefunction(plain)  # calling it returns a coroutine all the same
    assert list(inspect.signature(sleeper).parameters) == ["seconds"]


def test_an_empty_key_signs_nothing_so_it_is_refused() -> None:
    """PickleCodec(key="") claimed to be signed."""
    with pytest.raises(errors.ConfigurationError, match="empty"):
        PickleCodec(None, key="")
    with pytest.raises(errors.ConfigurationError):
        PickleCodec(None, key=b"")


@atask(name="review.transfer", namespace="signed")
async def transfer(amount: int) -> str:
    return f"transferred {amount}"


@atask(name="review.refund", namespace="signed")
async def refund(amount: int) -> str:
    return f"refunded {amount}"


async def test_a_signed_request_replayed_elsewhere_is_refused(
    transport_kind: str, request: pytest.FixtureRequest
) -> None:
    """The signature covered only the body: a captured request ran as any other atask."""
    url = request.getfixturevalue("amqp_url") if transport_kind == "amqp" else None
    await atasks.setup(transport_kind, url=url, key="s3cret", serve=True, namespace="signed")
    transport = atasks.get_transport("signed")
    captured: list[Request] = []
    send = transport.send_request

    async def spy(request: Request, on_progress: object = None) -> Reply:
        captured.append(request)
        return await send(request)

    transport.send_request = spy  # type: ignore[assignment, method-assign]
    assert await transfer(100) == "transferred 100"
    original = captured[0]
    for name, call_id in [(refund.name, new_call_id()), (transfer.name, new_call_id())]:
        replayed = Request(
            name=name, call_id=call_id, content_type=original.content_type, body=original.body
        )
        reply = await asyncio.wait_for(send(replayed), 10)
        assert not reply.ok
        assert reply.error_type == "atasks.errors.DecodeError"
        assert "replayed or misrouted" in reply.error_message


async def test_unsigned_pickle_on_a_broker_warns_once(
    amqp_url: str, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("atasks.router._unsigned_pickle_warned", False)
    monkeypatch.delenv("ATASKS_SECRET")
    caplog.set_level(logging.WARNING, "atasks.router")
    await atasks.setup("loopback", namespace="local")  # in-process: nobody else can send
    assert "unsigned pickle" not in caplog.text
    await atasks.setup("amqp", url=amqp_url, serve=True, insecure_pickle=True)  # opted in: warned
    await atasks.setup("amqp", url=amqp_url, serve=True, namespace="second", insecure_pickle=True)
    await atasks.setup("amqp", url=amqp_url, serve=True, key="k", namespace="signed")
    warned = [r for r in caplog.records if "unsigned pickle" in r.getMessage()]
    assert len(warned) == 1
    assert "anyone who can publish to the broker can run code" in warned[0].getMessage()


def test_the_typed_usage_file_is_checked_by_mypy() -> None:
    """@atask(name=..., timeout=...) made every call a mypy error; dev/typing/usage.py proves
    the signature is kept, when the test command runs mypy on it."""
    config = (REPO / "setup.cfg").read_text()
    files = re.search(r"^\[mypy\]\n(?:.*\n)*?files = (.*)$", config, re.MULTILINE)
    assert files is not None
    assert "dev/typing" in files.group(1)
    assert "mypy" in (REPO / "dev/test.sh").read_text()
    assert (REPO / "dev/typing/usage.py").is_file()
