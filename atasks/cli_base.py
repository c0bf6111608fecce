"""What the command line's commands share: their one-line errors and their quiet broker client."""

from __future__ import annotations

import logging

import click


class Failure(click.ClickException):
    """A one-line error for the user; the traceback only with -v."""

    exit_code = 1


def quiet_backend() -> None:
    """The broker client's own logs stay out of the monitoring commands' output: their errors
    are reported in one line of ours."""
    for name in ("aiormq", "aio_pika"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
