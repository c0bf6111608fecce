"""What a server logs of its calls: a call that fails (after its retries) once at ERROR, with
its traceback, call id and atask; a retry at WARNING; a refused request at WARNING only. Over
loopback and a broker."""

from __future__ import annotations

import logging
import uuid

import pytest
from servers import until

import atasks
from atasks import Retry, atask, atask_queue
from atasks.errors import AuthError
from atasks.retry import Backoff
from atasks.router import Router

pytestmark = pytest.mark.timeout(60)


@atask
async def breaks(marker: str) -> None:
    raise ValueError(f"broken {marker}")


@atask(retry=Retry(attempts=3, backoff=Backoff.constant(0.01)))
async def always_breaks(marker: str) -> None:
    raise ValueError(f"still broken {marker}")


attempts: dict[str, int] = {}


@atask(retry=Retry(attempts=3, backoff=Backoff.constant(0.01)))
async def breaks_twice(marker: str) -> str:
    attempts[marker] = attempts.get(marker, 0) + 1
    if attempts[marker] < 3:
        raise ValueError(f"not yet {marker}")
    return marker


class OutOfStock(Exception):
    pass


@atask(throws=(OutOfStock,))
async def sells(item: str) -> str:
    if item.startswith("none"):
        raise OutOfStock(f"no {item} left")
    raise KeyError(item)  # not in its contract


@atask_queue
async def breaks_unawaited(marker: str) -> None:
    raise ValueError(f"nobody waits for {marker}")


@atask(auth_required=True)
async def guarded() -> str:
    return "in"


def about(caplog: pytest.LogCaptureFixture, marker: str, level: int) -> list[logging.LogRecord]:
    """The records at ``level`` from atasks that mention ``marker``."""
    return [
        r
        for r in caplog.records
        if r.name.startswith("atasks") and r.levelno == level and marker in r.getMessage()
    ]


def errors_of(caplog: pytest.LogCaptureFixture, atask_name: str) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name.startswith("atasks") and r.levelno >= logging.ERROR and atask_name in str(r.args)
    ]


@pytest.fixture(autouse=True)
def _info(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "atasks")


async def test_a_failed_call_is_logged_once_at_error_with_its_traceback(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(ValueError, match="broken one"):
        await breaks("one")
    [record] = errors_of(caplog, breaks.name)
    assert record.levelno == logging.ERROR
    message = record.getMessage()
    assert breaks.name in message
    assert "ValueError: broken one" in message
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ValueError)
    call_id = record.args[0]  # type: ignore[index]
    assert isinstance(call_id, str)
    assert len(call_id) >= 16
    assert f"call {call_id} " in message
    assert "Traceback" in caplog.text
    assert "in breaks" in caplog.text


async def test_an_exception_the_atask_throws_by_contract_is_info_without_traceback(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    marker = f"none-{uuid.uuid4().hex}"
    with pytest.raises(OutOfStock, match=f"no {marker} left"):
        await sells(marker)
    [record] = about(caplog, f"no {marker} left", logging.INFO)
    assert record.exc_info is None
    assert f"{OutOfStock.__module__}.OutOfStock: no {marker} left" in record.getMessage()
    assert not errors_of(caplog, sells.name)
    # Any other exception of the same atask is still an ERROR with its traceback.
    other = f"other-{uuid.uuid4().hex}"
    with pytest.raises(KeyError):
        await sells(other)
    [error] = errors_of(caplog, sells.name)
    assert other in error.getMessage()
    assert error.exc_info is not None


def test_throws_takes_exception_classes_only() -> None:
    for bad in (ValueError, (ValueError, "x"), (KeyboardInterrupt,), [ValueError]):
        with pytest.raises(TypeError, match=r"throws=\.\.\.\) takes a tuple of exception classes"):
            atask(throws=bad)(breaks.fn)


async def test_retries_are_warnings_and_the_last_failure_one_error(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    two = f"two-{uuid.uuid4().hex}"  # counted across both transports' runs
    assert await breaks_twice(two) == two
    assert len(about(caplog, f"not yet {two}", logging.WARNING)) == 2
    assert not errors_of(caplog, breaks_twice.name)

    with pytest.raises(ValueError, match="still broken three"):
        await always_breaks("three")
    assert len(about(caplog, "still broken three", logging.WARNING)) == 2
    [record] = errors_of(caplog, always_breaks.name)
    assert "still broken three" in record.getMessage()


async def test_a_failed_fire_and_forget_call_is_logged_once(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    await breaks_unawaited("four")
    # dead-lettered after its failure was logged: that line, at INFO, is the last one
    await until(lambda: bool(about(caplog, "dead-lettered", logging.INFO)), within=20)
    [record] = errors_of(caplog, breaks_unawaited.name)
    assert "nobody waits for four" in record.getMessage()
    assert record.exc_info is not None
    assert not about(caplog, "nobody waits for four", logging.WARNING)


async def test_a_refused_request_is_a_warning_not_an_error(
    served: Router, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(AuthError):
        await guarded()
    assert about(caplog, "refused request", logging.WARNING)
    assert not errors_of(caplog, guarded.name)
    assert atasks.current_auth() is None
