"""``settings.ATASKS``: atasks' settings in a Django project's settings module.

    ATASKS = {"transport": "amqp", "url": "amqp://...", "key": "...", "concurrency": 16}

Its keys are the names of atasks' settings (``setup()``'s parameters and ``atasks settings``'
list, e.g. ``url`` for ``ATASKS_URL``, ``key`` for ``ATASKS_SECRET``). When Django starts, each
becomes the default of its ``ATASKS_*`` variable, so ``setup()``, ``atasks run``,
``manage.py run_atask`` and the servers it starts all see it; a variable set in the environment
wins, and an argument given in code or on the command line wins over both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from atasks import settings as atasks_settings

NAMES = {one.name: one for one in atasks_settings.SETTINGS}


def apply(config: Any) -> dict[str, str]:
    """Check ``config`` (``settings.ATASKS``) and make each entry the default of its
    ``ATASKS_*`` variable; returns the variables set. A bad entry is ``ImproperlyConfigured``,
    naming it."""
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"settings.ATASKS must be a dict, not {type(config).__name__}")
    found = {}
    for name, given in config.items():
        setting = NAMES.get(name)
        if setting is None:
            raise ImproperlyConfigured(
                f"settings.ATASKS[{name!r}]: not a setting of atasks; use one of "
                f"{', '.join(sorted(NAMES))}"
            )
        if given is None:  # as if not there: the variable, else the default
            continue
        try:
            text = _text(given)
            setting.parse(text)
        except ValueError as exc:
            shown = "..." if setting.secret else repr(given)
            raise ImproperlyConfigured(
                f"settings.ATASKS[{name!r}] = {shown}: {exc} ({setting.values})"
            ) from None
        found[setting.env] = text
    set_here = {env: text for env, text in found.items() if env not in os.environ}
    os.environ.update(set_here)
    return set_here


def _text(given: Any) -> str:
    """A value as its ``ATASKS_*`` variable would spell it."""
    if isinstance(given, bool):
        return "1" if given else "0"
    if isinstance(given, bytes):
        return given.decode()
    if isinstance(given, list | tuple):
        return ",".join(_text(one) for one in given)
    return str(given)
