"""``manage.py run_atask``: the 2019 command line of atasks, running what ``atasks run`` runs.

    python manage.py run_atask FILE_OR_MODULE... [-M MODE] [-T TRANSPORT] [-U URL] [-o KEY=VALUE...]

Also takes ``atasks run``'s ``--codec``, ``--concurrency``, ``--processes``, ``--workers``,
``--grace``, ``--max-message-size``, ``--consumer-timeout``, ``--queue-type`` and ``--events``,
with the same ``ATASKS_*`` environment defaults, and Django's ``-v``: 0 quiet, 1 normal, 2 and
3 more logging and tracebacks on errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from atasks import runner
from atasks.errors import ConfigurationError
from atasks.namespaces import namespaces
from atasks.router import get_router
from atasks.runner import MODES, TRANSPORTS, RunFailure, RunOptions, one_line, parse_option
from atasks.settings import DEFAULT_CONCURRENCY, DEFAULT_GRACE
from django_atasks.middleware import CloseOldConnections

log = logging.getLogger("django_atasks")

GIVEN = (
    "mode",
    "transport",
    "url",
    "codec",
    "insecure_pickle",
    "concurrency",
    "processes",
    "workers",
    "grace",
    "max_message_size",
    "consumer_timeout",
    "queue_type",
    "events",
)
"""The options ``runner.options_from`` resolves (``None``: not given on the command line)."""


class Command(BaseCommand):
    help = (
        "Import FILE_OR_MODULE... (files or modules with @atask definitions and an optional "
        "`async def aiomain`) and serve them (-M server), call them (-M client), or both "
        "(-M loopback, the default), as `atasks run` does. aiomain receives the command's "
        "options that it names (all of them with **options) and the -o ones."
    )

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("targets", metavar="FILE_OR_MODULE", nargs="+")
        parser.add_argument(
            "-M",
            "--mode",
            choices=MODES,
            default=None,
            help="server: serve until SIGINT/SIGTERM; client: run aiomain against servers; "
            "loopback (the default): both, in this process.",
        )
        parser.add_argument(
            "-T",
            "--transport",
            choices=TRANSPORTS,
            default=None,
            help="How calls travel. Default: loopback in loopback mode, amqp otherwise.",
        )
        parser.add_argument("-U", "--url", default=None, help="Broker URL (amqp).")
        parser.add_argument(
            "-o",
            "--option",
            dest="extra",
            nargs="*",
            action="extend",
            default=[],
            metavar="KEY=VALUE",
            help="Passed to aiomain(); values are Python literals or strings.",
        )
        parser.add_argument(
            "--codec",
            choices=("pickle", "json"),
            default=None,
            help="How values are encoded (default pickle).",
        )
        parser.add_argument(
            "--concurrency",
            type=int,
            default=None,
            help=f"Atasks one server process runs at once (default {DEFAULT_CONCURRENCY}).",
        )
        parser.add_argument(
            "--processes",
            type=int,
            default=None,
            help="Worker processes for mechanism='process' atasks (default: one per CPU).",
        )
        parser.add_argument(
            "--workers", type=int, default=None, help="Server processes (default 1)."
        )
        parser.add_argument(
            "--grace",
            type=float,
            default=None,
            help=f"Seconds a stopping server lets calls finish (default {DEFAULT_GRACE:g}).",
        )
        parser.add_argument(
            "--max-message-size",
            type=int,
            default=None,
            help="Largest request or reply (default: RabbitMQ's own, 16 MiB on 4.x, 128 MiB "
            "on 3.x).",
        )
        parser.add_argument(
            "--consumer-timeout",
            type=float,
            default=None,
            help="The broker's consumer_timeout in seconds (default 1800): longer calls are "
            "leased, not held.",
        )
        parser.add_argument(
            "--queue-type",
            choices=["quorum", "classic"],
            default=None,
            help="RabbitMQ request queues (default quorum).",
        )
        parser.add_argument(
            "--insecure-pickle",
            action="store_true",
            default=None,
            help="Allow unsigned pickle over a broker, where it is otherwise refused.",
        )
        parser.add_argument(
            "--events",
            action="store_true",
            default=None,
            help="Servers publish lifecycle events (see `atasks events`).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        verbosity = int(options["verbosity"])
        try:
            # Options not given come from their ATASKS_* variables, as for `atasks run`.
            run_options = runner.options_from(
                {name: options[name] for name in GIVEN},
                dict(parse_option(item) for item in options["extra"]),
            )
        except (ConfigurationError, RunFailure) as exc:
            raise CommandError(str(exc)) from exc
        server = run_options.mode == "server"
        runner.configure_logging(max(verbosity - 1, 0), verbosity == 0, server=server)
        try:
            if run_options.mode != "client" and run_options.workers == 1:
                _close_old_connections_around(options["targets"])
            code = runner.run(
                options["targets"],
                run_options,
                lambda: _worker_argv(options["targets"], run_options, options),
            )
        except RunFailure as exc:
            if verbosity > 1:
                log.exception("run_atask failed")
            raise CommandError(str(exc)) from exc
        except (CommandError, KeyboardInterrupt):
            raise
        except Exception as exc:
            if verbosity > 1:
                log.exception("run_atask failed")
            raise CommandError(one_line(exc)) from exc
        if code:
            raise CommandError(f"workers' supervisor exited with {code}", returncode=code)


def _close_old_connections_around(targets: list[str]) -> None:
    """Import ``targets`` and put ``CloseOldConnections`` on the router of each namespace with
    atasks, before it serves them."""
    for target in targets:
        runner.load(target)
    for ns in namespaces():
        if ns.atasks:
            get_router(ns.name).add_middleware(CloseOldConnections())


def _worker_argv(targets: list[str], run: RunOptions, options: dict[str, Any]) -> list[str]:
    """One supervised worker's command line: ``python -m django run_atask`` with this run's
    options, ``--workers 1``, these settings and the folder they are imported from."""
    argv = [sys.executable, "-m", "django", "run_atask", *targets, *run.worker_flags()]
    argv += ["--verbosity", str(options["verbosity"])]
    if options["extra"]:
        argv += ["-o", *options["extra"]]
    module = settings.SETTINGS_MODULE
    argv += ["--settings", module]
    folder = _import_root(module)
    if folder is not None:
        argv += ["--pythonpath", str(folder)]
    return argv


def _import_root(module: str) -> Path | None:
    """The folder on ``sys.path`` from which ``module`` was imported."""
    spec = importlib.util.find_spec(module.partition(".")[0])
    if spec is None or spec.origin is None:
        return None
    origin = Path(spec.origin)
    return origin.parent.parent if origin.name == "__init__.py" else origin.parent
