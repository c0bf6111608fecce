"""Every error atasks raises, under one root.

ATasksError
├── ConfigurationError            something is missing or bound twice
│   ├── NoCodecRegistered
│   ├── NoClientTransportRegistered
│   ├── DuplicateATask
│   ├── InvalidScheduleSpecificationError   @schedule(...) given a bad specification
│   ├── DuplicateScheduleError    two different schedules under one name
│   └── ScheduleNotFoundError     no schedule of that name is registered
├── JobNotFound                   no server serves the awaited atask
├── CodecError
│   ├── EncodeError               a value could not be encoded
│   └── DecodeError               bytes could not be decoded (or failed their signature)
├── TransportError                the message could not travel
│   ├── NotConnected
│   └── StreamInterrupted         a stream stopped before its end (says how many items came)
├── DeliveryLimitExceeded         a request crashed every server that took it
├── AuthError                     a call's auth context is missing, forged, expired or refused
│   └── AuthUnavailable           no key to sign or verify it with (retry once configured)
└── RemoteError                   an atask failed with an exception that could not travel as is

Every class takes a single message, so each one pickles and travels back to a caller unchanged.
"""

from __future__ import annotations


def type_name(exc: BaseException) -> str:
    """How an exception's type travels: ``module.QualName`` (rebuilt by name on the caller)."""
    cls = type(exc)
    return f"{cls.__module__}.{cls.__qualname__}"


class ATasksError(Exception):
    """Root of every error raised by atasks."""


class ConfigurationError(ATasksError):
    """atasks is not set up the way this call needs."""


class NoCodecRegistered(ConfigurationError):
    """A namespace has no codec, or a message arrived in a codec this side lacks."""


class NoClientTransportRegistered(ConfigurationError):
    """A namespace has no transport to send calls through."""


class DuplicateATask(ConfigurationError):
    """Two different functions were registered under one atask name."""


class InvalidScheduleSpecificationError(ConfigurationError):
    """``@schedule(...)``, ``Crontab(...)`` or ``Crontab.parse`` was given a specification that
    cannot work: none or several of ``interval``, ``at``, ``crontab`` and ``cron``, a value out
    of range, or a cron string that does not parse."""


class DuplicateScheduleError(ConfigurationError):
    """Two different schedules were registered under one name in one namespace."""


class ScheduleNotFoundError(ConfigurationError):
    """No schedule of that name is registered in the namespace."""


class JobNotFound(ATasksError):
    """No server serves the awaited atask."""


class CodecError(ATasksError):
    """A codec failed."""


class EncodeError(CodecError):
    """A value could not be encoded."""


class DecodeError(CodecError):
    """Bytes could not be decoded."""


class WireVersionError(DecodeError):
    """A server could not read a request: sent in a newer wire version, or needing what the
    server's version does not read. The message says both versions; the request is kept in the
    dead letters."""


class TransportError(ATasksError):
    """A message could not be sent or its reply could not come back."""


class NotConnected(TransportError):
    """The transport is not connected: await transport.connect() first."""


class StreamInterrupted(TransportError):
    """A stream stopped before its end and is not restarted (at most once per item): its server
    was lost, or some of its items were. ``received`` is how many items reached the caller."""

    def __init__(self, message: str, received: int | None = None) -> None:
        super().__init__(message)
        self.received = received

    def __reduce__(self) -> tuple[type[StreamInterrupted], tuple[str, int | None]]:
        return type(self), (str(self), self.received)


class DeliveryLimitExceeded(ATasksError):
    """A request was delivered too many times: each server that took it died before replying."""


class AuthError(ATasksError):
    """The call's auth context is missing, forged, expired, or refused by the atask's check."""


class AuthUnavailable(AuthError):
    """There is no key to sign or verify auth contexts with: set ``ATASKS_SECRET`` (or the
    namespace's ``PickleCodec(key=...)``) on every client and server. The call never ran, so it
    can be retried once the key is configured."""


class RemoteError(ATasksError):
    """An atask raised an exception that could not be rebuilt on the awaiting side.

    ``type_name`` is the remote exception's qualified class name, ``message`` its text and
    ``remote_traceback`` the formatted traceback on the server.
    """

    def __init__(self, type_name: str, message: str, remote_traceback: str = "") -> None:
        super().__init__(type_name, message, remote_traceback)
        self.type_name = type_name
        self.message = message
        self.remote_traceback = remote_traceback

    def __str__(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name
