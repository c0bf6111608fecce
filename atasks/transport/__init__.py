"""Transports: how requests reach servers and replies come back."""

from atasks.transport.base import LoopbackTransport, Reply, Request, RequestHandler, Transport

__all__ = ["LoopbackTransport", "Reply", "Request", "RequestHandler", "Transport"]
