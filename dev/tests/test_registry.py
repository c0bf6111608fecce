"""@atask registration, namespaces and the original documented set-up."""

from __future__ import annotations

import re
from typing import Any

import pytest

import atasks
from atasks import atask
from atasks.codecs import JSONCodec, PickleCodec
from atasks.errors import (
    DuplicateATask,
    NoClientTransportRegistered,
    NoCodecRegistered,
)
from atasks.namespaces import namespace
from atasks.router import get_router
from atasks.transport.base import LoopbackTransport


@atask
async def plain(x: int) -> int:
    return x + 1


@atask(name="custom-name", namespace="registry-ns", timeout=3)
async def configured() -> str:
    return "configured"


@atask(namespace="ns-one")
async def outer_in_one(x: int) -> int:
    return await inner_in_other(x) * 10


@atask(namespace="ns-other")
async def inner_in_other(x: int) -> int:
    return x + 1


def test_default_name_is_module_and_qualname() -> None:
    assert plain.name == f"{__name__}.plain"
    assert namespace().atasks[plain.name] is plain


def test_decorator_options() -> None:
    assert configured.name == "custom-name"
    assert configured.namespace == "registry-ns"
    assert configured.timeout == 3
    assert "custom-name" in namespace("registry-ns").atasks
    assert "custom-name" not in namespace().atasks


def test_two_functions_under_one_name_is_an_error_naming_both() -> None:
    async def first() -> None: ...

    async def second() -> None: ...

    atask(name="clash", namespace="clash-ns")(first)
    with pytest.raises(DuplicateATask) as info:
        atask(name="clash", namespace="clash-ns")(second)
    assert "first" in str(info.value)
    assert "second" in str(info.value)


def test_registering_the_same_function_again_is_fine() -> None:
    async def again() -> None: ...

    atask(name="again", namespace="again-ns")(again)
    atask(name="again", namespace="again-ns")(again)


def test_missing_codec_and_transport_say_what_to_do() -> None:
    with pytest.raises(NoCodecRegistered, match="PickleCodec") as no_codec:
        atasks.get_codec("nowhere")
    assert "atasks.setup(namespace='nowhere')" in str(no_codec.value)
    with pytest.raises(NoClientTransportRegistered, match="connect") as no_transport:
        atasks.get_transport("nowhere")
    assert "atasks.setup(\"amqp\", namespace='nowhere')" in str(no_transport.value)


async def test_calling_without_set_up_fails_clearly() -> None:
    with pytest.raises(NoCodecRegistered, match=r"is not set up .*await atasks\.setup\(\) before"):
        await plain(1)


def test_the_newest_codec_is_installed_and_replacing_a_different_one_warns(
    caplog: pytest.LogCaptureFixture,
) -> None:
    PickleCodec(namespace="codec-ns")
    PickleCodec(namespace="codec-ns")  # an equal codec: installed without a word
    assert not caplog.records
    newest = JSONCodec(namespace="codec-ns")
    assert atasks.get_codec("codec-ns") is newest
    [record] = caplog.records
    assert record.levelname == "WARNING"
    assert re.search(r"PickleCodec.*replaced by JSONCodec", record.getMessage())


def test_detached_objects_bind_nothing() -> None:
    PickleCodec(namespace=None)
    LoopbackTransport(namespace=None)
    assert namespace().codec is None
    assert namespace().transport is None


async def test_original_documented_setup_verbatim() -> None:
    """The 2019 README's initialisation, with the loopback transport."""
    from atasks.codecs import PickleCodec
    from atasks.router import get_router
    from atasks.transport.base import LoopbackTransport

    PickleCodec()
    transport = LoopbackTransport()
    await transport.connect()
    router = get_router()
    await router.activate(transport)
    assert await plain(41) == 42
    await router.deactivate()


async def test_namespaces_are_separate_and_await_each_other() -> None:
    for name in ("ns-one", "ns-other"):
        await atasks.setup("loopback", namespace=name)
    assert await outer_in_one(4) == 50
    assert get_router("ns-one") is not get_router("ns-other")
    assert atasks.get_codec("ns-one") is not atasks.get_codec("ns-other")
    with pytest.raises(NoCodecRegistered):  # the default namespace was never set up
        await plain(1)


async def test_close_resets_so_set_up_can_run_again() -> None:
    await atasks.setup("loopback")
    assert await plain(1) == 2
    await atasks.close()
    assert namespace().codec is None
    assert namespace().transport is None
    await atasks.setup("loopback", codec="json")
    assert await plain(2) == 3


def test_public_api_is_listed_and_documented_paths_import() -> None:
    import importlib

    for name in atasks.__all__:
        assert hasattr(atasks, name), name
    for path in ("tasks", "router", "codecs", "transport.base", "transport.backends.amqp"):
        importlib.import_module(f"atasks.{path}")


async def test_a_server_answers_ping_only_once_it_serves_every_atask() -> None:
    """``atasks ping`` and ``inspect`` read ``server_statistics``: set while the router was
    still registering, a ping answered before the last atask was served, and the call a user
    made on that answer failed with JobNotFound."""
    seen: list[object] = []

    class Watching(LoopbackTransport):
        async def register_callback(self, name: Any, handler: Any = None) -> None:
            seen.append(self.server_statistics)  # what a ping arriving now would read
            await super().register_callback(name, handler)

    async def one() -> int:
        return 1

    async def two() -> int:
        return 2

    atask(name="one", namespace="ping-ns")(one)
    atask(name="two", namespace="ping-ns")(two)
    PickleCodec(namespace="ping-ns")
    transport = Watching("ping-ns")
    await transport.connect()
    router = get_router("ping-ns")
    await router.activate(transport)
    try:
        assert seen == [None, None]
        assert transport.server_statistics is not None
        assert transport.server_statistics()["atasks"] == ("one", "two")
    finally:
        await router.deactivate(0)
        await transport.disconnect()
