"""A FastAPI application whose endpoints await atasks.

Everything in one process (the loopback transport, the default: the application serves its
own atasks)::

    pip install 'atasks[fastapi]' uvicorn
    uvicorn examples.fastapi_app:app

Over RabbitMQ: servers run the atasks, the application only calls them. With the same
``ATASKS_SECRET`` for both (unsigned pickle is refused over a broker)::

    export ATASKS_SECRET=... ATASKS_URL=amqp://guest:guest@127.0.0.1:5672/
    atasks run examples/fastapi_app.py --mode server
    ATASKS_TRANSPORT=amqp uvicorn examples.fastapi_app:app
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request

import atasks


@atasks.atask
async def word_count(text: str) -> int:
    """Runs where the atasks are served: here in loopback, on a server over RabbitMQ."""
    await asyncio.sleep(0)  # stands for real work: I/O, a model, a slow API
    return len(text.split())


@atasks.atask
async def shout(text: str) -> str:
    if not text:
        raise ValueError("nothing to shout")
    return text.upper() + "!"


@asynccontextmanager
async def resources(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    """The application's own lifespan: atasks is set up before it and closed after it."""
    yield {"greeting": "hello"}


app = FastAPI(lifespan=atasks.asgi.lifespan(resources))


@app.get("/count")
async def count(text: str) -> dict[str, int]:
    return {"words": await word_count(text)}


@app.get("/shout")
async def shout_endpoint(text: str = "") -> dict[str, str]:
    try:
        return {"shouted": await shout(text)}
    except ValueError as exc:  # the atask's own exception, raised again here
        raise HTTPException(status_code=422, detail=str(exc)) from exc


@app.get("/both")
async def both(text: str) -> dict[str, Any]:
    """Two atasks at once, wherever they run."""
    words, shouted = await asyncio.gather(word_count(text), shout(text))
    return {"words": words, "shouted": shouted}


@app.get("/hello")
async def hello(request: Request) -> dict[str, str]:
    """The application's lifespan state is there as usual."""
    return {"shouted": await shout(request.state.greeting)}
