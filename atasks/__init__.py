"""atasks: await a coroutine on any process or host, through RabbitMQ or in-process.

Layers, each knowing only the ones below: atask (``tasks``) → router (``router``, with its
``call_side`` and ``serve_side``, each through the ``middleware`` chain) → codec → transport
(``transport.contract``; the 2019 interface and 0.0.3's names in ``compat``). At the bottom:
``calls`` (what a running call knows), ``settings`` (every default), ``binding`` (codecs and
transports that install themselves); the registry ``namespaces`` sits above the contracts.
Context that travels with calls: ``propagation`` (context variables), ``auth_context`` (signed
claims), ``tracing`` (OpenTelemetry, imported only when in use); ``logging`` tells records
which call they belong to; ``settings`` is every ``ATASKS_*`` variable; ``asgi`` is a lifespan
for FastAPI and Starlette applications.
"""

from atasks import asgi as asgi
from atasks import logging as logging
from atasks import settings as settings
from atasks import tracing as tracing
from atasks.auth_context import auth, current_auth
from atasks.blocking import close_blocking, iter_sync, run_sync, setup_blocking
from atasks.calls import current_call_id, current_deadline, current_priority, deadline, priority
from atasks.codecs import Codec, JSONCodec, PickleCodec
from atasks.compat import ClassicAdapter, Transport
from atasks.delays import delayed
from atasks.errors import (
    ATasksError,
    AuthError,
    AuthUnavailable,
    CodecError,
    ConfigurationError,
    DecodeError,
    DeliveryLimitExceeded,
    DuplicateATask,
    DuplicateScheduleError,
    EncodeError,
    InvalidScheduleSpecificationError,
    JobNotFound,
    NoClientTransportRegistered,
    NoCodecRegistered,
    NotConnected,
    RemoteError,
    ScheduleNotFoundError,
    StreamInterrupted,
    TransportError,
    WireVersionError,
)
from atasks.events import Event, Progress, deliver_progress, observe_progress, progress
from atasks.handlers import handler
from atasks.lifecycle import close, setup
from atasks.locks import lock
from atasks.middleware import Call, Middleware, Proceed
from atasks.namespaces import get_codec, get_transport, reset
from atasks.propagation import propagate, unpropagate
from atasks.retry import Backoff, Retry
from atasks.router import Router, get_router
from atasks.schedules import Crontab, Month, Schedule, Weekday, get_schedule, schedule
from atasks.streams import RemoteStream
from atasks.tasks import ATask, StreamATask, atask, atask_broadcast, atask_queue
from atasks.transport.loopback import LoopbackTransport

__all__ = [
    "ATask",
    "ATasksError",
    "AuthError",
    "AuthUnavailable",
    "Backoff",
    "Call",
    "ClassicAdapter",
    "Codec",
    "CodecError",
    "ConfigurationError",
    "Crontab",
    "DecodeError",
    "DeliveryLimitExceeded",
    "DuplicateATask",
    "DuplicateScheduleError",
    "EncodeError",
    "Event",
    "InvalidScheduleSpecificationError",
    "JSONCodec",
    "JobNotFound",
    "LoopbackTransport",
    "Middleware",
    "Month",
    "NoClientTransportRegistered",
    "NoCodecRegistered",
    "NotConnected",
    "PickleCodec",
    "Proceed",
    "Progress",
    "RemoteError",
    "RemoteStream",
    "Retry",
    "Router",
    "Schedule",
    "ScheduleNotFoundError",
    "StreamATask",
    "StreamInterrupted",
    "Transport",
    "TransportError",
    "Weekday",
    "WireVersionError",
    "atask",
    "atask_broadcast",
    "atask_queue",
    "auth",
    "close",
    "close_blocking",
    "current_auth",
    "current_call_id",
    "current_deadline",
    "current_priority",
    "deadline",
    "delayed",
    "deliver_progress",
    "get_codec",
    "get_router",
    "get_schedule",
    "get_transport",
    "handler",
    "iter_sync",
    "lock",
    "observe_progress",
    "priority",
    "progress",
    "propagate",
    "reset",
    "run_sync",
    "schedule",
    "setup",
    "setup_blocking",
    "unpropagate",
]
