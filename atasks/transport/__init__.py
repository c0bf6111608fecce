"""Transports: how requests reach servers and replies come back."""

from atasks.namespaces import get_transport
from atasks.transport.base import (
    ClassicCallback,
    LoopbackTransport,
    Reply,
    Request,
    RequestHandler,
    Transport,
)
from atasks.transport.classic import ClassicAdapter

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
