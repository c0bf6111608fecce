"""Transports written to the 2019 interface, reached through today's.

A 2019 transport moves one message each way: ``send_request(name, content) -> bytes`` on the
calling side, and ``callback(name, content) -> bytes`` on the serving side. ``ClassicAdapter``
packs a ``Request`` into that message and a ``Reply`` into the answer: a first line naming the
format, a JSON header line (call id, content type, parent call or the outcome) and the codec's
bytes. Routers wrap a classic transport in its adapter by themselves (``modern()``).

The request's headers (trace context, auth snapshot) and priority travel in the JSON header line
(so the atasks a served call awaits inherit its priority; the transport orders nothing). What such
a transport cannot carry: a deadline (the caller still stops waiting at its deadline,
but the server is not told), a cancellation, progress reports, events.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from atasks.calls import priority_from
from atasks.errors import ATasksError, JobNotFound, TransportError
from atasks.transport.contract import RequestHandler, Transport
from atasks.transport.messages import FrameListener, Reply, Request

MAGIC = b"atasks-classic/1\n"
_ADAPTER = "_atasks_classic_adapter"


def modern(transport: Transport) -> Transport:
    """``transport`` itself, or for a 2019-style transport its one ``ClassicAdapter``."""
    if not transport.classic:
        return transport
    adapter = transport.__dict__.get(_ADAPTER)
    if adapter is None:
        adapter = ClassicAdapter(transport)
        transport.__dict__[_ADAPTER] = adapter
    assert isinstance(adapter, ClassicAdapter)
    return adapter


class ClassicAdapter(Transport):
    """Today's transport interface on top of a transport written to the 2019 one (``inner``).

    Not bound to any namespace: ``inner`` is. Progress listeners are never called, and
    cancelling a call only stops waiting for it.
    """

    classic = False

    def __init__(self, inner: Transport) -> None:
        super().__init__(None)
        self.inner = inner
        self._handlers: dict[str, RequestHandler] = {}
        self._serving: set[asyncio.Task[Any]] = set()

    async def connect(self) -> None:
        await self.inner.connect()

    async def disconnect(self) -> None:
        await self.inner.disconnect()

    async def send_request(self, request: Request, on_frame: FrameListener | None = None) -> Reply:
        content = pack_request(request)
        try:
            answer = await self.inner.send_request(request.name, content)  # type: ignore[arg-type]
        except ATasksError:
            raise
        except Exception as exc:
            raise TransportError(f"{self.inner!r} could not send the request: {exc!r}") from exc
        if not isinstance(answer, bytes | bytearray | memoryview):
            raise TransportError(
                f"{self.inner!r}.send_request returned {type(answer).__name__}, not the reply's "
                "bytes"
            )
        return unpack_reply(bytes(answer), request.call_id)

    async def register_callback(self, name: str, handler: RequestHandler) -> None:
        first = not self._handlers
        self._handlers[name] = handler
        if first:
            await self.inner.register_callback(self._on_request)  # type: ignore[call-arg, arg-type]

    async def unregister_callback(self, name: str) -> None:
        if self._handlers.pop(name, None) is not None and not self._handlers:
            await self.inner.unregister_callback()  # type: ignore[call-arg]

    async def drain(self, grace: float) -> None:
        if self._serving and grace > 0:
            await asyncio.wait(set(self._serving), timeout=grace)
        for task in list(self._serving):
            task.cancel()

    async def _on_request(self, name: str, content: bytes) -> bytes:
        """The 2019 callback: one request in, one reply out, whatever happens."""
        task = asyncio.current_task()
        if task is not None:
            self._serving.add(task)
        try:
            try:
                request = unpack_request(name, content)
            except ValueError as exc:
                return pack_reply(
                    Reply.failure("", TransportError(f"not an atasks request: {exc}"))
                )
            handler = self._handlers.get(name)
            if handler is None:
                failure = JobNotFound(f"this server does not serve atask {name!r}")
                return pack_reply(Reply.failure(request.call_id, failure))
            return pack_reply(await handler(request))
        finally:
            if task is not None:
                self._serving.discard(task)

    def __repr__(self) -> str:
        return f"ClassicAdapter({self.inner!r})"


def pack_request(request: Request) -> bytes:
    header: dict[str, Any] = {"id": request.call_id, "type": request.content_type}
    if request.parent_id is not None:
        header["parent"] = request.parent_id
    if request.headers:
        header["headers"] = request.headers
    if request.priority is not None:
        header["priority"] = request.priority
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + request.body


def unpack_request(name: str, content: bytes) -> Request:
    """The request packed in ``content``; ``ValueError`` for anything else."""
    header, body = _unpack(content)
    parent = header.get("parent")
    headers = header.get("headers")
    return Request(
        name=name,
        call_id=_text(header, "id"),
        content_type=_text(header, "type"),
        body=body,
        parent_id=parent if isinstance(parent, str) else None,
        priority=priority_from(header.get("priority")),
        headers=(
            {k: v for k, v in headers.items() if isinstance(v, str)}
            if isinstance(headers, dict)
            else {}
        ),
    )


def pack_reply(reply: Reply) -> bytes:
    header: dict[str, Any] = {"id": reply.call_id, "ok": reply.ok, "type": reply.content_type}
    if not reply.ok:
        header["error"] = [reply.error_type, reply.error_message, reply.traceback]
    return MAGIC + json.dumps(header, separators=(",", ":")).encode() + b"\n" + reply.body


def unpack_reply(content: bytes, call_id: str) -> Reply:
    """The reply packed in ``content``, for call ``call_id``; ``TransportError`` otherwise."""
    try:
        header, body = _unpack(content)
        error = header.get("error") or ["", "", ""]
        if not (isinstance(error, list) and len(error) == 3):
            raise ValueError("bad error description")
        reply = Reply(
            call_id=_text(header, "id"),
            ok=header.get("ok") is True,
            content_type=_text(header, "type"),
            body=body,
            error_type=str(error[0]),
            error_message=str(error[1]),
            traceback=str(error[2]),
        )
    except ValueError as exc:
        raise TransportError(f"malformed reply through a 2019-style transport: {exc}") from None
    if reply.call_id not in (call_id, ""):
        raise TransportError(f"reply to call {reply.call_id!r} came back for call {call_id!r}")
    return reply


def _unpack(content: bytes) -> tuple[dict[str, Any], bytes]:
    if not content.startswith(MAGIC):
        raise ValueError("it does not start with the atasks classic header")
    line, newline, body = content[len(MAGIC) :].partition(b"\n")
    if not newline:
        raise ValueError("no header line")
    header = json.loads(line)
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header, body


def _text(header: dict[str, Any], key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise ValueError(f"header {key!r} is missing or not a string")
    return value
