"""``atasks.asgi.lifespan`` and examples/fastapi_app.py: endpoints that await atasks, through
httpx's ASGI transport, in loopback and against servers over RabbitMQ."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from servers import Servers, delete_queues
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import atasks
from atasks.errors import ConfigurationError
from atasks.namespaces import namespace as registered
from examples import fastapi_app

pytestmark = pytest.mark.timeout(120)


@contextlib.asynccontextmanager
async def running(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    """``app`` started (its lifespan entered) and a client for it; stopped after."""
    async with app.router.lifespan_context(app) as state:
        # Starlette gives the lifespan's state to every request; httpx's transport does not
        # run the lifespan, so pass it on as a server would.
        transport = httpx.ASGITransport(app=_with_state(app, state or {}))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


def _with_state(app: Any, state: dict[str, Any]) -> Any:
    async def asgi(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "state": dict(state)}
        await app(scope, receive, send)

    return asgi


async def check_the_example(client: httpx.AsyncClient) -> None:
    assert (await client.get("/count", params={"text": "one two three"})).json() == {"words": 3}
    assert (await client.get("/shout", params={"text": "hi"})).json() == {"shouted": "HI!"}
    failed = await client.get("/shout")
    assert failed.status_code == 422
    assert failed.json() == {"detail": "nothing to shout"}
    both = (await client.get("/both", params={"text": "a b"})).json()
    assert both == {"words": 2, "shouted": "A B!"}
    assert (await client.get("/hello")).json() == {"shouted": "HELLO!"}


async def test_the_example_app_in_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ATASKS_TRANSPORT", raising=False)
    async with running(fastapi_app.app) as client:
        assert registered("default").transport is not None
        assert registered("default").transport.in_process
        await check_the_example(client)
    assert registered("default").transport is None  # closed with the application


async def test_the_example_app_calls_servers_over_rabbitmq(
    amqp_url: str, servers: Servers, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers.start(workload="examples/fastapi_app.py")
    try:
        await servers.wait_serving(0)
        monkeypatch.setenv("ATASKS_TRANSPORT", "amqp")
        monkeypatch.setenv("ATASKS_URL", amqp_url)
        async with running(fastapi_app.app) as client:
            transport = registered("default").transport
            assert transport is not None
            assert not transport.in_process
            assert atasks.get_router().serving is None  # the servers serve, not the app
            await check_the_example(client)
    finally:
        await delete_queues(amqp_url, fastapi_app)
    assert "examples.fastapi_app.shout" in servers.log(0)  # the server ran them


async def test_a_starlette_app_with_options_given_in_code() -> None:
    @atasks.atask(namespace="asgi-test")
    async def double(n: int) -> int:
        return 2 * n

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"n": await double(int(request.query_params["n"]))})

    app = Starlette(
        routes=[Route("/double", endpoint)],
        lifespan=atasks.asgi.lifespan(namespace="asgi-test", transport="loopback"),
    )
    async with running(app) as client:
        assert (await client.get("/double", params={"n": "21"})).json() == {"n": 42}
        assert registered("asgi-test").transport is not None
    assert registered("asgi-test").transport is None


async def test_a_bad_setting_fails_the_startup_and_the_app_lifespan_does_not_run() -> None:
    entered: list[str] = []

    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        entered.append("own")
        yield

    app = FastAPI(lifespan=atasks.asgi.lifespan(own, codec="nonsense"))
    with pytest.raises(ConfigurationError, match="unknown codec 'nonsense'"):
        async with running(app):
            pass
    assert entered == []


async def test_atasks_is_closed_when_the_app_lifespan_fails() -> None:
    @contextlib.asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        raise RuntimeError("the database is not there")
        yield

    app = FastAPI(lifespan=atasks.asgi.lifespan(own))
    with pytest.raises(RuntimeError, match="the database is not there"):
        async with running(app):
            pass
    assert registered("default").transport is None
