"""Compatibility: the 2019 interface and upstream 0.0.3's names, in one place.

- ``Transport`` is the public base class of transports (``atasks.Transport``, and the 2019 path
  ``atasks.transport.base.Transport``): the core contract (``atasks.transport.contract``) plus
  the 2019 interface, told apart by ``send_request``'s signature when a subclass is defined.
  A 2019 transport moves one message each way: ``send_request(name, content) -> bytes`` on the
  calling side, and ``callback(name, content) -> bytes`` on the serving side, the callback given
  with ``register_callback(callback)``.
- ``ClassicAdapter`` is how routers reach such a transport (``modern()``): it packs a
  ``Request`` into that message and a ``Reply`` into the answer: a first line naming the format,
  a JSON header line (call id, content type, parent call or the outcome) and the codec's bytes.
  The request's headers (trace context, auth snapshot) and priority travel in the header line
  (so the atasks a served call awaits inherit its priority; the transport orders nothing).
  What such a transport cannot carry: a deadline (the caller still stops waiting at its
  deadline, but the server is not told), a cancellation, progress reports, events.
- ``Router0_0_3`` gives the router 0.0.3's ``activate_queue`` and ``activate_broadcast``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, ClassVar

from atasks.calls import priority_from
from atasks.errors import ATasksError, JobNotFound, TransportError
from atasks.namespaces import namespace
from atasks.settings import DEFAULT_NAMESPACE
from atasks.transport import contract
from atasks.transport.contract import RequestHandler
from atasks.transport.messages import FrameListener, Reply, Request

ClassicCallback = Callable[[str, bytes], Awaitable[bytes]]
"""The 2019 interface's request callback: ``callback(atask_name, content) -> reply content``."""

_CLASSIC_METHODS = ("connect", "disconnect", "send_request")
_ADAPTER = "_atasks_classic_adapter"
MAGIC = b"atasks-classic/1\n"


class Transport(contract.Transport):
    """Carries requests to servers and replies back, written to either interface.

    - today's (``atasks.transport.contract.Transport``): ``send_request(request, on_frame) ->
      Reply``, ``register_callback(name, handler)``, ``unregister_callback(name)``,
      ``drain(grace)`` — with deadlines, cancellation and frames (progress, stream items). A
      subclass implements all of them, and ``connect``/``disconnect``; one that ``streams``
      also implements ``grant``.
    - the 2019 one (``classic``): ``send_request(name, content) -> bytes`` and the inherited
      ``register_callback(callback)``, which stores ``callback(name, content) -> bytes`` in
      ``self.callback`` for the transport to call with each request it receives;
      ``unregister_callback()`` clears it. A subclass implements ``connect``, ``disconnect`` and
      ``send_request``. Routers reach it through ``ClassicAdapter``, which packs each call into
      one message and back; it carries no deadline, cancellation or progress.

    They are told apart by ``send_request``'s signature when a subclass is defined (``classic``
    can also be set in the class body). Constructing a transport installs it in ``namespace``
    (``None`` leaves it detached). The bare ``Transport()`` can be constructed, and its methods
    raise ``NotImplementedError``.
    """

    classic: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "classic" not in vars(cls):
            cls.classic = _takes_name_and_content(cls.send_request)

    @classmethod
    def _missing(cls) -> tuple[str, ...]:
        if cls is Transport:
            return ()
        required = _CLASSIC_METHODS if cls.classic else contract.METHODS
        return tuple(
            name
            for name in required
            if getattr(cls, name) in (getattr(Transport, name), getattr(contract.Transport, name))
        )

    def __init__(self, namespace: str | None = DEFAULT_NAMESPACE) -> None:
        super().__init__(namespace)
        self.callback: ClassicCallback | None = None
        """The 2019 interface: what ``register_callback(callback)`` stored."""

    if not TYPE_CHECKING:  # at run time the base also takes the 2019 forms

        async def register_callback(self, *args):
            """Start serving requests for atask ``name`` with ``handler``: ``(name, handler)``.

            The 2019 form ``register_callback(callback)`` stores ``callback`` in
            ``self.callback``.
            """
            if len(args) == 1 and callable(args[0]):
                self.callback = args[0]
                return
            raise NotImplementedError(
                f"{type(self).__name__} does not implement register_callback(name, handler)"
            )

        async def unregister_callback(self, *args):
            """Stop taking new requests for ``name``; those in progress go on.

            The 2019 form ``unregister_callback()`` clears ``self.callback``.
            """
            if not args:
                self.callback = None
                return
            raise NotImplementedError(
                f"{type(self).__name__} does not implement unregister_callback(name)"
            )


def _takes_name_and_content(send_request: Callable[..., Any]) -> bool:
    """Whether ``send_request`` is the 2019 ``(self, name, content)``: two required arguments
    after ``self``, where today's ``(self, request, on_frame=None)`` has one."""
    try:
        parameters = list(inspect.signature(send_request).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    required = [p for p in parameters if p.kind in positional and p.default is p.empty]
    return len(required) == 2


async def send_classic(transport: Transport, name: str, content: bytes) -> bytes:
    """A 2019 ``send_request(name, content)`` through a transport that serves in this process:
    its registered callback answers."""
    callback = transport.callback
    if callback is None:
        raise JobNotFound(
            f"nothing serves {name!r} through {transport!r}: register_callback(callback) first"
        )
    return await callback(name, content)


class Router0_0_3:
    """The router methods of 0.0.3: each checks that its atask is registered, then serves every
    atask of the namespace, as ``activate`` does."""

    namespace: str

    if TYPE_CHECKING:

        async def activate(self, transport: Any = None) -> None: ...

    async def activate_queue(self, name: str, transport: Any = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    async def activate_broadcast(self, name: str, transport: Any = None) -> None:
        """Upstream 0.0.3's name: check that atask ``name`` is registered here, then
        ``activate(transport)`` (which serves every kind of atask)."""
        self._registered(name)
        await self.activate(transport)

    def _registered(self, name: str) -> None:
        if name not in namespace(self.namespace).atasks:
            raise JobNotFound(
                f"no atask {name!r} is registered in namespace {self.namespace!r}: import the "
                "module that defines it first"
            )


def modern(transport: contract.Transport) -> contract.Transport:
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

    def __init__(self, inner: contract.Transport) -> None:
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
