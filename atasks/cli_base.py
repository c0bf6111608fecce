"""What the command line's commands share: their broker options, their one-line errors and
their quiet broker client."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

from atasks.namespaces import DEFAULT

F = TypeVar("F", bound=Callable[..., Any])

url_option = click.option("--url", envvar="ATASKS_URL", help="Broker URL.")
"""``--url``, else ``ATASKS_URL``; ``None`` when neither is given (the command's default)."""
namespace_option = click.option("--namespace", default=DEFAULT, show_default=True)


def seconds_option(
    *decls: str, low: float, high: float, default: float, help: str
) -> Callable[[F], F]:
    """An option of seconds from ``low`` to ``high``, its default shown."""
    return click.option(
        *decls,
        type=click.FloatRange(min=low, max=high),
        default=default,
        show_default=True,
        help=help,
    )


def wait_option(help: str) -> Callable[[F], F]:
    """``--wait``: seconds to wait for the servers' answers, 1 unless given."""
    return seconds_option("--wait", low=0.1, high=60, default=1.0, help=help)


class Failure(click.ClickException):
    """A one-line error for the user; the traceback only with -v."""

    exit_code = 1


def quiet_backend() -> None:
    """The broker client's own logs stay out of the monitoring commands' output: their errors
    are reported in one line of ours."""
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
