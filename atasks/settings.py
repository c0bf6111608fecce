"""Every setting that can come from the environment, in one place: its ``ATASKS_*`` variable,
default, accepted values and where it applies.

``atasks.setup()``, ``AMQPTransport`` (however made), ``atasks run`` and Django's
``run_atask`` read them from here; an argument given in code or on the command line wins over
the variable, which wins over the default. A bad value is a ``ConfigurationError`` naming the
variable. The table in docs/reference/configuration.md is generated from ``SETTINGS``
(``atasks settings`` prints it), and a test checks that it matches.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atasks import keys
from atasks.errors import ConfigurationError

DEFAULT_NAMESPACE = "default"
"""The namespace of atasks, codecs and transports that name none."""
DEFAULT_CONCURRENCY = 64
"""Atasks one server runs at once, unless told otherwise."""
DEFAULT_GRACE = 10.0
"""Seconds a stopping server lets the calls it runs finish."""
DEFAULT_WINDOW = 64
"""Items a streaming atask's server makes ahead of its consumer, unless told otherwise."""
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"
"""The broker a transport connects to when no URL is given."""
DEFAULT_AUTH_TTL = 300.0
"""Seconds an ``atasks.auth(claims)`` context lives, unless told otherwise."""

SETUP = "setup"
AMQP = "AMQPTransport"
RUN = "atasks run"
PROCESS = "process"
QUEUES = "atasks queues"

TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Setting:
    """One setting: ``name`` is its parameter (``setup``, ``AMQPTransport``) and, with dashes,
    its ``atasks run`` option."""

    name: str
    env: str
    default: Any
    values: str  # what it accepts, for people
    parse: Callable[[str], Any]  # raises ValueError saying what is wrong
    where: tuple[str, ...]
    help: str
    shown_default: str | None = None  # when the default needs words
    secret: bool = False  # its value never appears in a message

    def default_text(self) -> str:
        if self.shown_default is not None:
            return self.shown_default
        if self.default is None:
            return "none"
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        if isinstance(self.default, float):
            return f"{self.default:g}"
        return str(self.default)


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().lower()
        if value not in choices:
            raise ValueError(f"use one of {', '.join(choices)}")
        return value

    return parse


def _int(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError("not a whole number") from None
        if value < low or (high is not None and value > high):
            span = f"between {low} and {high}" if high is not None else f"at least {low}"
            raise ValueError(f"must be {span}")
        return value

    return parse


def _seconds(low: float, *, above: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError("not a number of seconds") from None
        if not math.isfinite(value) or value < low or (above and value == low):
            raise ValueError(f"must be {'over' if above else 'at least'} {low:g} seconds")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise ValueError("use 1/true/yes/on or 0/false/no/off")


def _text(text: str) -> str:
    if not text.strip():
        raise ValueError("empty")
    return text.strip()


def _import_paths(text: str) -> tuple[str, ...]:
    paths = tuple(part.strip() for part in text.split(",") if part.strip())
    for path in paths:
        module, colon, name = path.partition(":")
        if not (colon and module and name):
            raise ValueError(f"{path!r} is not module:Class")
    return paths


def _secret(text: str) -> tuple[bytes, ...]:
    return keys.parse(text)  # the keys, the signing one first


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "transport",
        "ATASKS_TRANSPORT",
        None,
        "`loopback`, `amqp`",
        _choice("loopback", "amqp"),
        (SETUP, RUN),
        "How calls travel.",
        "`loopback` (run: `amqp` in server and client mode)",
    ),
    Setting(
        "url",
        "ATASKS_URL",
        DEFAULT_URL,
        "AMQP URLs, comma-separated",
        _text,
        (SETUP, AMQP, RUN),
        "Broker URL; several are the nodes of a cluster, tried in turn.",
        "`amqp://guest:guest@127.0.0.1:5672/`",
    ),
    Setting(
        "management_url",
        "ATASKS_MANAGEMENT_URL",
        None,
        "an HTTP URL",
        _text,
        (QUEUES,),
        "RabbitMQ's management API, which lists the queues (AMQP cannot).",
        "the broker's host, port 15672, the AMQP URL's user and password",
    ),
    Setting(
        "codec",
        "ATASKS_CODEC",
        "pickle",
        "`pickle`, `json`",
        _choice("pickle", "json"),
        (SETUP, RUN),
        "How values are encoded.",
    ),
    Setting(
        "key",
        "ATASKS_SECRET",
        None,
        "text; several comma-separated",
        _secret,
        (SETUP, PROCESS),
        "The namespace key: signs pickle (HMAC-SHA256) and auth contexts. Same everywhere; "
        "to rotate, `new,old`: the first signs, any verifies.",
        "none (unsigned pickle: refused over a broker; no auth)",
        secret=True,
    ),
    Setting(
        "insecure_pickle",
        "ATASKS_INSECURE_PICKLE",
        False,
        "boolean",
        _bool,
        (SETUP, RUN),
        "Allow unsigned pickle over a broker, where it is otherwise refused: anyone who can "
        "publish to the broker can then run code in your processes.",
    ),
    Setting(
        "middleware",
        "ATASKS_MIDDLEWARE",
        None,
        "`module:Class`, comma-separated",
        _import_paths,
        (SETUP, RUN),
        "Middlewares added to the namespace's router, outermost first, each made with no "
        "arguments (`atasks run`: made once, added to every namespace it runs).",
    ),
    Setting(
        "serve",
        "ATASKS_SERVE",
        None,
        "boolean",
        _bool,
        (SETUP,),
        "Whether `setup()` also serves this namespace's atasks.",
        "on for loopback, off otherwise",
    ),
    Setting(
        "concurrency",
        "ATASKS_CONCURRENCY",
        DEFAULT_CONCURRENCY,
        "1 to 65535",
        _int(1, 65_535),
        (SETUP, RUN),
        "Atasks one server process runs at once (those awaiting others don't count).",
    ),
    Setting(
        "processes",
        "ATASKS_PROCESSES",
        None,
        "1 or more",
        _int(1),
        (SETUP, RUN),
        'Worker processes of each server for `mechanism="process"` atasks, started when '
        "first needed.",
        shown_default="one per CPU",
    ),
    Setting(
        "mode",
        "ATASKS_MODE",
        "loopback",
        "`server`, `client`, `loopback`",
        _choice("server", "client", "loopback"),
        (RUN,),
        "What `atasks run` does.",
    ),
    Setting(
        "workers",
        "ATASKS_WORKERS",
        1,
        "at least 1",
        _int(1),
        (RUN,),
        "Server processes, restarted when they die (server mode; the variable is ignored in other "
        "modes).",
    ),
    Setting(
        "grace",
        "ATASKS_GRACE",
        DEFAULT_GRACE,
        "seconds, at least 0",
        _seconds(0),
        (RUN,),
        "Seconds a stopping server lets calls in progress finish.",
    ),
    Setting(
        "reload",
        "ATASKS_RELOAD",
        False,
        "boolean",
        _bool,
        (RUN,),
        "Server mode, for development: restart the server, once drained, when a module it "
        "loaded changes (needs watchfiles: the `reload` extra).",
    ),
    Setting(
        "queue_type",
        "ATASKS_QUEUE_TYPE",
        "quorum",
        "`quorum`, `classic`",
        _choice("quorum", "classic"),
        (AMQP, RUN),
        "RabbitMQ request queues.",
    ),
    Setting(
        "replies",
        "ATASKS_REPLIES",
        "direct",
        "`direct`, `durable`",
        _choice("direct", "durable"),
        (AMQP,),
        "Direct reply-to, resumed after a reconnect, or a durable reply queue per caller.",
    ),
    Setting(
        "delivery_limit",
        "ATASKS_DELIVERY_LIMIT",
        5,
        "at least 1",
        _int(1),
        (AMQP,),
        "Deliveries of a request whose servers all died before it is dead-lettered.",
    ),
    Setting(
        "dead_letter_ttl",
        "ATASKS_DEAD_LETTER_TTL",
        7 * 24 * 3600.0,
        "seconds, over 0",
        _seconds(0, above=True),
        (AMQP,),
        "How long dead letters are kept.",
        "604800 (7 days)",
    ),
    Setting(
        "max_message_size",
        "ATASKS_MAX_MESSAGE_SIZE",
        None,
        "bytes, at least 1",
        _int(1),
        (AMQP, RUN),
        "Largest request or reply, checked before publishing.",
        "the broker's default (16 MiB on 4.x, 128 MiB on 3.x)",
    ),
    Setting(
        "reconnect_wait",
        "ATASKS_RECONNECT_WAIT",
        30.0,
        "seconds, at least 0",
        _seconds(0),
        (AMQP,),
        "How long a call waits for a lost connection to come back.",
    ),
    Setting(
        "connect_timeout",
        "ATASKS_CONNECT_TIMEOUT",
        10.0,
        "seconds, over 0",
        _seconds(0, above=True),
        (AMQP, RUN),
        "Time allowed to open a connection; an `atasks run` server keeps trying that long "
        "while its broker is not there (not yet started, restarting).",
        "10 (`atasks run` servers: 60)",
    ),
    Setting(
        "consumer_timeout",
        "ATASKS_CONSUMER_TIMEOUT",
        1800.0,
        "seconds, at least 1",
        _seconds(1),
        (AMQP, RUN),
        "The broker's consumer_timeout: calls running longer than half of it are leased.",
    ),
    Setting(
        "persistent",
        "ATASKS_PERSISTENT",
        True,
        "boolean",
        _bool,
        (AMQP,),
        "Requests survive a broker restart on classic queues too.",
    ),
    Setting(
        "max_priority",
        "ATASKS_MAX_PRIORITY",
        None,
        "1 to 9",
        _int(1, 9),
        (AMQP,),
        "Classic request queues are declared with `x-max-priority` N, so priorities order them "
        "(quorum queues need nothing; see Priorities).",
        "none (classic queues are FIFO, as in 0.2)",
    ),
    Setting(
        "coalesce",
        "ATASKS_COALESCE",
        32,
        "1 to 1000",
        _int(1, 1000),
        (AMQP,),
        "Calls to one atask ready in the same turn of the event loop travel in one message, "
        "up to N of them (1: each alone; see Coalescing).",
    ),
    Setting(
        "health_port",
        "ATASKS_HEALTH_PORT",
        None,
        "port, 1 to 65535",
        _int(1, 65535),
        (RUN,),
        "Serve `/livez` and `/readyz` over HTTP on this port (servers; see Deployment).",
    ),
    Setting(
        "metrics_port",
        "ATASKS_METRICS_PORT",
        None,
        "port, 1 to 65535",
        _int(1, 65535),
        (RUN,),
        "Serve Prometheus metrics at `/metrics` on this port (servers; the `prometheus` extra).",
    ),
    Setting(
        "endpoints_host",
        "ATASKS_ENDPOINTS_HOST",
        "127.0.0.1",
        "an address or host name",
        _text,
        (RUN,),
        "Where the health and metrics ports listen (`0.0.0.0` or `::` for every interface).",
    ),
    Setting(
        "events",
        "ATASKS_EVENTS",
        False,
        "boolean",
        _bool,
        (AMQP, RUN),
        "Servers publish lifecycle events (see `atasks events`).",
    ),
    Setting(
        "auth_ttl",
        "ATASKS_AUTH_TTL",
        DEFAULT_AUTH_TTL,
        "seconds, over 0",
        _seconds(0, above=True),
        (PROCESS,),
        "Default lifetime of `atasks.auth(claims)` contexts.",
    ),
    Setting(
        "tracing",
        "ATASKS_TRACING",
        "auto",
        "`auto`, `off`",
        _choice("auto", "off"),
        (PROCESS,),
        "`auto`: OpenTelemetry spans when a tracer provider is configured; `off`: never "
        "(unless `atasks.tracing.instrument()`).",
    ),
)

BY_NAME: dict[str, Setting] = {setting.name: setting for setting in SETTINGS}


def setting(name: str) -> Setting:
    return BY_NAME[name]


def from_env(name: str, environ: Mapping[str, str] | None = None) -> Any:
    """The value of ``name``'s variable, parsed, or ``None`` when it is unset or empty;
    ``ConfigurationError`` naming the variable if it is bad."""
    found = setting(name)
    text = (os.environ if environ is None else environ).get(found.env)
    if text is None or not text.strip():
        return None
    try:
        return found.parse(text)
    except ValueError as exc:
        shown = found.env if found.secret else f"{found.env}={text!r}"
        raise ConfigurationError(f"{shown}: {exc}") from None


def value(name: str, given: Any = None, environ: Mapping[str, str] | None = None) -> Any:
    """``given`` if not ``None``, else the variable's value, else the default."""
    if given is not None:
        return given
    found = from_env(name, environ)
    return found if found is not None else setting(name).default


def markdown_table() -> str:
    """The docs' table of variables."""
    lines = [
        "| variable | setting | default | values | applies to | what |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s in SETTINGS:
        where = ", ".join(
            "`setup()`"
            if place == SETUP
            else "`AMQPTransport`"
            if place == AMQP
            else "`atasks run`"
            if place == RUN
            else "`atasks queues`"
            if place == QUEUES
            else "the process"
            for place in s.where
        )
        lines.append(
            f"| `{s.env}` | `{s.name}` | {s.default_text()} | {s.values} | {where} | {s.help} |"
        )
    return "\n".join(lines)
