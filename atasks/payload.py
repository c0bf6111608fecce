"""What a request's body encodes, and reading it back: ``[args, kwargs, atask name, call id]``,
plus the values of propagated context variables when the caller had any set.

The name and the call id travel inside the (possibly signed) body, so a server refuses a request
replayed into another atask's queue or under another call id.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from atasks.errors import DecodeError
from atasks.transport.messages import Request


def pack_arguments(
    name: str,
    args: Sequence[Any],
    kwargs: dict[str, Any],
    call_id: str,
    values: dict[str, Any] | None,
) -> list[Any]:
    """What a request's body encodes."""
    packed = [list(args), kwargs, name, call_id]
    if values:
        packed.append(values)
    return packed


def split_arguments(
    payload: Any, request: Request
) -> tuple[list[Any], dict[str, Any], dict[str, Any] | None]:
    """The arguments and context values in a request's payload, ``[args, kwargs, atask name,
    call id]`` plus ``{name: value}`` of propagated variables when the caller had any set, once
    the name and id are those the request arrived with: a (signed) request replayed into
    another atask's queue, or under another call id, is refused."""
    if (  # the common shape, checked at a glance: positional arguments, no context values
        type(payload) is list
        and len(payload) == 4
        and type(payload[0]) is list
        and not payload[1]
        and type(payload[1]) is dict
        and payload[2] == request.name
        and payload[3] == request.call_id
    ):
        return payload[0], payload[1], None
    if not (
        isinstance(payload, list | tuple)
        and len(payload) in (4, 5)
        and isinstance(payload[0], list | tuple)
        and isinstance(payload[1], dict)
        and all(isinstance(key, str) for key in payload[1])
        and (len(payload) == 4 or _is_values(payload[4]))
    ):
        raise DecodeError(
            "a request must carry [args, kwargs, atask name, call id] and maybe {name: value} "
            f"of context variables, not {_shape(payload)}"
        )
    if len(payload) == 4:
        args, kwargs, name, call_id = payload
        values = None
    else:
        args, kwargs, name, call_id, values = payload
    if name != request.name or call_id != request.call_id:
        raise DecodeError(
            f"refused: the payload was made for atask {name!r} call {call_id!r} but arrived "
            f"as atask {request.name!r} call {request.call_id!r} (replayed or misrouted)"
        )
    return list(args), kwargs, values


def _is_values(values: Any) -> bool:
    return isinstance(values, dict) and all(isinstance(key, str) for key in values)


def _shape(payload: Any) -> str:
    if isinstance(payload, list | tuple):
        return f"a {type(payload).__name__} of {len(payload)}"
    return type(payload).__name__
