"""atasks: await a coroutine on any process or host, through RabbitMQ or in-process.

Layers, each knowing only the one below: atask (tasks) → router → codec → transport.
"""

from atasks.calls import current_call_id, current_deadline, deadline
from atasks.codecs import Codec, JSONCodec, PickleCodec
from atasks.errors import (
    ATasksError,
    DecodeError,
    DeliveryLimitExceeded,
    EncodeError,
    JobNotFound,
    NoClientTransportRegistered,
    NoCodecRegistered,
    RemoteError,
    TransportError,
)
from atasks.lifecycle import close, setup
from atasks.namespaces import get_codec, get_transport, reset
from atasks.router import Router, get_router
from atasks.tasks import ATask, atask
from atasks.transport.base import LoopbackTransport, Transport

__all__ = [
    "ATask",
    "ATasksError",
    "Codec",
    "DecodeError",
    "DeliveryLimitExceeded",
    "EncodeError",
    "JSONCodec",
    "JobNotFound",
    "LoopbackTransport",
    "NoClientTransportRegistered",
    "NoCodecRegistered",
    "PickleCodec",
    "RemoteError",
    "Router",
    "Transport",
    "TransportError",
    "atask",
    "close",
    "current_call_id",
    "current_deadline",
    "deadline",
    "get_codec",
    "get_router",
    "get_transport",
    "reset",
    "setup",
]
