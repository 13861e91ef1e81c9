"""Typed field readers for JSON request bodies.

Each reader takes the body (a dict), a field name and its constraints, and returns the value
or raises :class:`~chatservice.errors.BadRequest` whose key and parameters name the field and
the expected type or range, so the message can be localized. JSON booleans are not accepted
as numbers (``True`` is not ``1`` here).
"""

from __future__ import annotations

import math
from typing import Any

from chatservice.errors import BadRequest

ROLES = ("system", "user", "assistant")
_MISSING = object()


def _get(body: dict[str, Any], *names: str) -> tuple[str, Any]:
    """The first present, non-null field among ``names`` (aliases), with the name used."""
    for name in names:
        value = body.get(name)
        if value is not None:
            return name, value
    return names[0], _MISSING


def string(
    body: dict[str, Any], *names: str, required: bool = False, non_empty: bool = False
) -> str | None:
    """A string field (first of ``names`` present); ``None`` when absent and not required."""
    name, value = _get(body, *names)
    if value is _MISSING:
        if required:
            raise BadRequest("missing_field", field=name)
        return None
    if not isinstance(value, str):
        raise BadRequest("not_a_string", field=name)
    if non_empty and not value.strip():
        raise BadRequest("empty_field", field=name)
    return value


def boolean(body: dict[str, Any], name: str, default: bool) -> bool:
    """A boolean field, ``default`` when absent."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest("not_a_boolean", field=name)
    return value


def integer(
    body: dict[str, Any], name: str, minimum: int, maximum: int, default: int | None = None
) -> int | None:
    """An integer in ``[minimum, maximum]``; a float with an integral value is accepted."""
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("not_an_integer", field=name)
    if isinstance(value, float):
        if not value.is_integer():
            raise BadRequest("not_an_integer", field=name)
        value = int(value)
    if not minimum <= value <= maximum:
        raise BadRequest("out_of_range", field=name, min=minimum, max=maximum)
    return value


def positive_integer(body: dict[str, Any], name: str) -> int | None:
    """An integer of at least 1 (no upper bound), or ``None`` when absent; a float with an
    integral value is accepted (JSON Schema counts 5.0 as the integer 5)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest("not_a_positive_integer", field=name)
    return value


def json_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    """A JSON object field, or ``None`` when absent."""
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise BadRequest("not_an_object", field=name)
    return value


def number(body: dict[str, Any], name: str, minimum: float, maximum: float) -> float | None:
    """A finite number in ``[minimum, maximum]``, or ``None`` when absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadRequest("not_a_number", field=name)
    # Range first: math.isfinite raises OverflowError on integers too large for a float.
    if not minimum <= value <= maximum or not math.isfinite(value):
        raise BadRequest("out_of_range", field=name, min=_show(minimum), max=_show(maximum))
    return value


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def messages(body: dict[str, Any], *names: str) -> list[dict[str, str]] | None:
    """A list of ``{"role", "content"}`` turns (roles system/user/assistant, content a string).

    Only ``role`` and ``content`` are kept. Returns ``None`` when absent.
    """
    name, value = _get(body, *names)
    if value is _MISSING:
        return None
    if not isinstance(value, list):
        raise BadRequest("not_a_list", field=name)
    turns = []
    for index, item in enumerate(value):
        if not isinstance(item, dict) or not isinstance(item.get("content"), str):
            raise BadRequest("invalid_message", field=name, index=index)
        if item.get("role") not in ROLES:
            raise BadRequest("invalid_role", field=name, index=index)
        turns.append({"role": item["role"], "content": item["content"]})
    return turns


def stop_sequences(
    body: dict[str, Any], name: str = "stop", max_items: int = 4
) -> list[str] | None:
    """A stop string or a list of at most ``max_items`` strings, as a list; ``None`` if absent."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if (
        not isinstance(value, list)
        or len(value) > max_items
        or not all(isinstance(item, str) for item in value)
    ):
        raise BadRequest("invalid_stop", field=name, max=max_items)
    return list(value)
