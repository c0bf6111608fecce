"""Transports: how requests reach servers and replies come back."""

from atasks.compat import ClassicAdapter, ClassicCallback, Transport
from atasks.namespaces import get_transport
from atasks.transport.contract import RequestHandler
from atasks.transport.loopback import LoopbackTransport
from atasks.transport.messages import Reply, Request

__all__ = [
    "ClassicAdapter",
    "ClassicCallback",
    "LoopbackTransport",
    "Reply",
    "Request",
    "RequestHandler",
    "Transport",
    "get_transport",
]
