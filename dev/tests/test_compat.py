"""The 2019 design as its README and its own tests describe it, working as written."""

from __future__ import annotations

import asyncio
import importlib
import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import REPO
from servers import Servers, delete_queues, wait_until_served

import atasks
from atasks import atask
from atasks.errors import JobNotFound
from atasks.events import Progress
from atasks.router import Router

SCENARIOS = "dev/tests/scenarios_2019.py"
SCENARIOS_OUTPUT = [
    "sequence: ['first', 'FIRST!']",
    "parallel: [0, 1, 2, 3, 4]",
    "shout: DONE!",
]


def test_the_2019_import_paths() -> None:
    from atasks.codecs import Codec, PickleCodec, get_codec
    from atasks.router import Router, get_router
    from atasks.tasks import atask
    from atasks.transport.backends.amqp import AMQPTransport
    from atasks.transport.base import LoopbackTransport, Transport, get_transport

    assert all(
        callable(item)
        for item in (Codec, PickleCodec, get_codec, Router, get_router, atask, AMQPTransport)
    )
    assert all(callable(item) for item in (LoopbackTransport, Transport, get_transport))


def test_the_newest_codec_of_a_namespace_is_installed() -> None:
    from atasks.codecs import Codec, get_codec

    first = Codec()
    assert get_codec() == first
    second = Codec()
    assert get_codec() != first
    assert get_codec() == second
    third = Codec("the test")  # the namespace, as the first positional argument
    assert get_codec("the test") == third
    assert get_codec() == second


def test_the_newest_transport_of_a_namespace_is_installed() -> None:
    from atasks.transport.base import Transport, get_transport

    first = Transport()
    assert get_transport() == first
    second = Transport()
    assert get_transport() != first
    assert get_transport() == second
    third = Transport("the test")
    assert get_transport("the test") == third


async def test_the_base_classes_say_what_is_not_implemented() -> None:
    from atasks.codecs import Codec
    from atasks.transport.base import Transport

    with pytest.raises(NotImplementedError):
        await Codec(None).encode(1)
    with pytest.raises(NotImplementedError):
        await Codec(None).decode(b"")
    with pytest.raises(NotImplementedError):
        await Transport(None).connect()
    with pytest.raises(NotImplementedError):
        await Transport(None).send_request("name", b"content")  # type: ignore[arg-type]


async def test_pickle_codec_methods_are_awaitable() -> None:
    from atasks.codecs import PickleCodec

    codec = PickleCodec()
    value = ([1, 2], {"a": 1, "b": 2})
    encoded = await codec.encode(value)
    assert isinstance(encoded, bytes)
    assert await codec.decode(encoded) == value


def test_a_positional_argument_of_pickle_codec_is_its_namespace_not_a_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from atasks.codecs import PickleCodec

    monkeypatch.delenv("ATASKS_SECRET")  # the tests' key

    codec = PickleCodec("ns")
    assert atasks.get_codec("ns") is codec
    assert not codec.signed
    with pytest.raises(TypeError):
        PickleCodec("ns", "secret")  # type: ignore[call-arg]
    assert PickleCodec(None, key="secret").signed


class ReprCodec(atasks.Codec):
    """A user codec exactly as the 2019 README shows one: two async methods, nothing else."""

    async def encode(self, obj: object) -> bytes:
        return repr(obj).encode()

    async def decode(self, content: bytes) -> object:
        import ast

        return ast.literal_eval(content.decode())


class OtherReprCodec(ReprCodec):
    pass


@atask(namespace="readme-codec")
async def add_up(numbers: list[int]) -> int:
    return sum(numbers)


async def test_a_user_codec_as_in_the_2019_readme() -> None:
    codec = ReprCodec("readme-codec")
    assert codec.content_type != OtherReprCodec(None).content_type  # each class its own type
    transport = atasks.LoopbackTransport("readme-codec")
    await transport.connect()
    await atasks.get_router("readme-codec").activate(transport)
    assert await add_up([1, 2, 3]) == 6
    with pytest.raises(TypeError, match="unsupported operand"):
        await add_up("not numbers")  # type: ignore[arg-type]


def test_a_transport_missing_a_method_fails_at_construction() -> None:
    from atasks.transport.base import Transport

    class HalfDone(Transport):
        async def connect(self) -> None: ...

        async def send_request(self, name: str, content: bytes) -> bytes:  # type: ignore[override]
            return content

    with pytest.raises(TypeError, match="disconnect"):
        HalfDone(None)


async def test_the_loopback_transport_speaks_the_2019_byte_interface() -> None:
    from atasks.transport.base import LoopbackTransport

    transport = LoopbackTransport()
    seen: list[tuple[str, bytes]] = []

    async def callback(name: str, content: bytes) -> bytes:
        seen.append((name, content))
        return content

    await transport.register_callback(callback)
    assert await transport.send_request("test", b"123") == b"123"
    assert seen == [("test", b"123")]
    await transport.unregister_callback()
    with pytest.raises(JobNotFound):
        await transport.send_request("test", b"123")


class QueueTransport(atasks.Transport):
    """A user transport written to the 2019 README: connect, disconnect, and
    send_request(name, content) returning the reply's bytes. Requests hop through a queue to a
    task of their own, as they would through a broker."""

    async def connect(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes, asyncio.Future[bytes]]] = asyncio.Queue()
        self.worker = asyncio.ensure_future(self._work())
        self.serving: set[asyncio.Future[None]] = set()

    async def disconnect(self) -> None:
        self.worker.cancel()

    async def send_request(self, name: str, content: bytes) -> bytes:  # type: ignore[override]
        reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        await self.queue.put((name, content, reply))
        return await reply

    async def _work(self) -> None:
        while True:
            name, content, reply = await self.queue.get()
            task = asyncio.ensure_future(self._serve(name, content, reply))
            self.serving.add(task)
            task.add_done_callback(self.serving.discard)

    async def _serve(self, name: str, content: bytes, reply: asyncio.Future[bytes]) -> None:
        assert self.callback is not None, "register_callback(callback) stores self.callback"
        reply.set_result(await self.callback(name, content))


@atask(namespace="classic")
async def classic_double(x: int) -> int:
    await atasks.progress(1, 1, "never seen by the caller")
    return 2 * x


@atask(namespace="classic")
async def classic_fan_out(n: int) -> list[int]:
    return list(await asyncio.gather(*(classic_double(i) for i in range(n))))


@atask(namespace="classic")
async def classic_fail() -> None:
    raise LookupError("from the server")


@atask(namespace="classic")
async def classic_sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


async def test_a_user_transport_written_to_the_2019_readme() -> None:
    from atasks.codecs import PickleCodec
    from atasks.router import get_router

    PickleCodec("classic")
    transport = QueueTransport("classic")
    assert transport.classic
    await transport.connect()
    router = get_router("classic")
    await router.activate(transport)
    assert router.serving is transport
    assert await classic_fan_out(10) == [2 * i for i in range(10)]
    with pytest.raises(LookupError, match="from the server"):
        await classic_fail()
    # no progress through a 2019 transport, and a deadline only stops the caller waiting
    reports: list[Progress] = []
    async with atasks.observe_progress(reports.append):
        assert await classic_double(4) == 8
    assert reports == []
    with pytest.raises(TimeoutError):
        async with atasks.deadline(0.1):
            await classic_sleep(10)
    await router.deactivate(grace=0)
    assert transport.callback is None  # unregister_callback() cleared it


@atask(namespace="replaced")
async def which_transport() -> str:
    return "served"


async def test_a_new_transport_while_a_router_serves_through_an_earlier_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from atasks.codecs import PickleCodec
    from atasks.router import get_router
    from atasks.transport.base import LoopbackTransport

    PickleCodec("replaced")
    first = LoopbackTransport("replaced")
    await first.connect()
    router = get_router("replaced")
    await router.activate(first)
    second = LoopbackTransport("replaced")  # installed: calls now go through it
    await second.connect()
    assert "replaced by" in caplog.text
    assert router.serving is first  # the router keeps serving through the first
    with pytest.raises(JobNotFound):
        await which_transport()  # nothing serves through the second yet
    await router.activate(second)  # as the 2019 command did: serve through the new one
    assert router.serving is second
    assert await which_transport() == "served"


async def test_an_atask_imported_after_activate_is_served(
    served: Router, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the 2019 router test did: activate first, import the atasks afterwards."""
    name = f"late_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        "from atasks.tasks import atask\n"
        "@atask\n"
        "async def late(x):\n"
        "    return x * 3\n"
        "@atask\n"
        "async def later(x):\n"
        "    return await late(x) + 1\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module(name)
    try:
        assert await asyncio.wait_for(module.later(5), 30) == 16
        assert module.late.name in served.statistics().atasks
    finally:
        if served.serving is not None and not served.serving.in_process:
            await delete_queues(served.serving.url, module)  # type: ignore[attr-defined]


def _run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "atasks", "run", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_2019_scenarios_file_runs_through_atasks_run_in_loopback_mode() -> None:
    result = _run(SCENARIOS, "--mode", "loopback")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mode: loopback transport: loopback", *SCENARIOS_OUTPUT]


async def test_a_2019_scenarios_file_as_server_and_client_over_rabbitmq(
    servers: Servers, amqp_url: str
) -> None:
    import scenarios_2019

    servers.start(workload=SCENARIOS)
    try:
        await atasks.setup("amqp", url=amqp_url)
        await wait_until_served(scenarios_2019.all_at_once, 1)
        client = await asyncio.to_thread(
            _run, SCENARIOS, "--mode", "client", "--transport", "amqp", "--url", amqp_url
        )
    finally:
        await delete_queues(amqp_url, scenarios_2019)
    assert client.returncode == 0, client.stderr + servers.log(0)
    assert client.stdout.splitlines() == ["mode: client transport: amqp", *SCENARIOS_OUTPUT]


def test_aiomain_receives_the_command_options(tmp_path: Path) -> None:
    script = tmp_path / "show_options.py"
    script.write_text(
        "import json\n"
        "async def aiomain(**options):\n"
        "    print(json.dumps(options, sort_keys=True))\n"
    )
    result = _run(str(script), "--codec", "json", "-o", "n=3", "-o", "codec=mine")
    assert result.returncode == 0, result.stderr
    options = json.loads(result.stdout)
    assert options == {
        "mode": "loopback",
        "transport": "loopback",
        "url": None,
        "codec": "mine",  # -o wins over the command's own option
        "concurrency": 64,
        "processes": None,
        "workers": 1,
        "grace": 10.0,
        "max_message_size": None,
        "consumer_timeout": None,
        "queue_type": "quorum",
        "events": False,
        "n": 3,
    }


def test_aiomain_without_options_gets_only_what_it_names(tmp_path: Path) -> None:
    script = tmp_path / "names_two.py"
    script.write_text(
        "async def aiomain(n=10, mode=None):\n    print(n, mode)\n"  # no **options
    )
    result = _run(str(script), "--mode", "loopback")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "10 loopback\n"
    assert _run(str(script), "-o", "n=2").stdout == "2 loopback\n"
