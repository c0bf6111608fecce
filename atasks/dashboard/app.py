"""The dashboard's web application (Starlette): the page, its static files, and the JSON and
server-sent-event endpoints it reads from a ``Board``."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from atasks.dashboard.board import Board
from atasks.runner import one_line

STATIC = Path(__file__).with_name("static")
KEEPALIVE = 15.0
"""Seconds between comments on an idle event stream, so that proxies keep it open."""


class Server(uvicorn.Server):
    """uvicorn's server for the dashboard of ``board``: stopping, it first ends the pages'
    event streams, which would otherwise hold up its graceful shutdown."""

    def __init__(self, board: Board) -> None:
        config = uvicorn.Config(create_app(board), log_level="warning", timeout_graceful_shutdown=5)
        super().__init__(config)
        self.board = board

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.board.end_watches()
        await super().shutdown(sockets=sockets)


def create_app(board: Board) -> Starlette:
    """The dashboard of ``board``'s namespace; it starts following events when the server
    starts, and closes the board when it stops."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        board.start()
        try:
            yield
        finally:
            await board.close()

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def overview(request: Request) -> Response:
        try:
            return JSONResponse(await board.overview())
        except Exception as exc:
            return _unavailable("cannot ask the servers", exc)

    async def calls(request: Request) -> Response:
        return JSONResponse({"namespace": board.namespace, "calls": board.tree.snapshot()})

    async def dead(request: Request) -> Response:
        try:
            letters = await board.dead_letters()
        except Exception as exc:
            return _unavailable("cannot list dead letters", exc)
        queue = board.topology.dead_letter_queue
        return JSONResponse({"queue": queue, "count": len(letters), "dead_letters": letters})

    async def replay(request: Request) -> Response:
        refused = _refuse_cross_site(request)
        if refused is not None:
            return refused
        try:
            asked = await request.json()
        except ValueError:
            asked = None
        call_id = asked.get("call_id") if isinstance(asked, dict) else None
        if not isinstance(asked, dict) or not isinstance(call_id, str | None):
            return JSONResponse({"error": 'send {"call_id": "..."}, or {} for all'}, 400)
        try:
            return JSONResponse(await board.replay(call_id))
        except Exception as exc:
            return _unavailable("cannot replay", exc)

    async def events(request: Request) -> Response:
        return StreamingResponse(
            _event_stream(board),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    routes = [
        Route("/", index),
        Route("/api/overview", overview),
        Route("/api/calls", calls),
        Route("/api/events", events),
        Route("/api/dead", dead),
        Route("/api/dead/replay", replay, methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _event_stream(board: Board) -> AsyncIterator[str]:
    """Server-sent events: ``snapshot`` (the whole tree) first, then ``calls`` (the calls an
    event changed), until the page goes or the dashboard stops; a page that falls behind is
    sent ``reset`` and its browser reconnects for a new snapshot."""
    with board.watch() as (watcher, snapshot):
        yield "retry: 1000\n\n"
        yield _message("snapshot", snapshot)
        while not watcher.overflowed:
            try:
                async with asyncio.timeout(KEEPALIVE):
                    nodes = await watcher.queue.get()
            except TimeoutError:
                yield ": keepalive\n\n"
                continue
            if nodes is None:
                return
            yield _message("calls", nodes)
        yield _message("reset", [])


def _message(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _unavailable(what: str, exc: Exception) -> Response:
    return JSONResponse({"error": f"{what}: {one_line(exc)}"}, 503)


def _refuse_cross_site(request: Request) -> Response | None:
    """A replay must come from the dashboard's own page: JSON (which a form on another site
    cannot send without the browser asking first) and, where the browser says, the same
    origin."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/json":
        return JSONResponse({"error": "send JSON (Content-Type: application/json)"}, 415)
    origin = request.headers.get("origin")
    if origin and urlsplit(origin).netloc != request.headers.get("host"):
        return JSONResponse({"error": f"replay from another origin ({origin}) refused"}, 403)
    return None
