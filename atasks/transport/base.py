"""The documented (2019) import path of the transport contract, kept: it only re-exports.

The contract lives in ``atasks.transport.contract``, the messages it moves in
``atasks.transport.messages``, and the in-process transport in ``atasks.transport.loopback``.
"""

from __future__ import annotations

from atasks.compat import ClassicCallback, Transport
from atasks.namespaces import get_transport
from atasks.transport.contract import Capacity as Capacity
from atasks.transport.contract import RequestHandler
from atasks.transport.loopback import INLINE_DEPTH as INLINE_DEPTH
from atasks.transport.loopback import LoopbackTransport
from atasks.transport.messages import NO_HEADERS as NO_HEADERS
from atasks.transport.messages import REFUSED as REFUSED
from atasks.transport.messages import (
    DeadRequest,
    Frame,
    FrameListener,
    FrameSink,
    Item,
    Reply,
    Request,
)
from atasks.transport.messages import dead_reason as dead_reason

__all__ = [
    "ClassicCallback",
    "DeadRequest",
    "Frame",
    "FrameListener",
    "FrameSink",
    "Item",
    "LoopbackTransport",
    "Reply",
    "Request",
    "RequestHandler",
    "Transport",
    "get_transport",
]
