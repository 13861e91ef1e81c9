"""JSON values no encoder can send on: refused where a client sent them, replaced where an
upstream did.

``json.loads`` accepts ``NaN``, ``Infinity``, ``1e999`` (an infinite float) and ``"\\ud800"``
(a lone UTF-16 surrogate), but ``json.dumps(allow_nan=False)`` and every UTF-8 encoder (a
response, a log line, SQLite, Redis, an upstream call) refuse them later, far from the cause.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any

from chatservice.errors import BadRequest

#: A UTF-16 surrogate left alone: JSON's ``"\ud800"`` parses to one, and it cannot be
#: encoded as UTF-8 (a stored value, a log line, an upstream call would all fail).
_SURROGATE = re.compile("[\ud800-\udfff]")
#: How a surrogate can be written in UTF-8 JSON text: a ``\uD800``-``\uDFFF`` escape, or its
#: UTF-8 bytes (``json.loads`` decodes bytes with "surrogatepass"). A pair of escapes, or an
#: escaped backslash before "ud8", matches too: the text is then checked the slow way.
_SURROGATE_TEXT = rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]"
_MAYBE_SURROGATE = re.compile(_SURROGATE_TEXT)
#: ... and how a non-finite number can: ``NaN``, ``Infinity``, or a number big enough to
#: overflow a float (an exponent of three digits or more, or 200 digits in a row: with an
#: exponent under 100, an overflow needs over 200 of them). Anywhere, strings included.
_MAYBE_UNSAFE = re.compile(_SURROGATE_TEXT + rb"|NaN|Infinity|[eE][-+]?\d{3}|\d{200}")


@functools.cache
def encoder(
    ensure_ascii: bool = True,
    allow_nan: bool = True,
    default: Callable[[Any], Any] | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> json.JSONEncoder:
    """One shared ``json.JSONEncoder`` per set of options: its ``encode(value)`` is
    ``json.dumps(value, ...)`` with these options, less the encoder ``json.dumps`` builds on
    every call made with options other than its defaults (two Python calls and a dozen
    attribute settings). Raises like ``json.dumps``.
    """
    return json.JSONEncoder(
        ensure_ascii=ensure_ascii,
        allow_nan=allow_nan,
        default=default,
        separators=separators,
        sort_keys=sort_keys,
    )


def find_unsafe_value(value: Any, path: str = "") -> BadRequest | None:
    """The 400 for the first value of a parsed JSON document no JSON encoder will send on:
    ``NaN``, ``Infinity``, a number too large for a float (``1e999``) -- ``not_finite`` --
    or a string (or key) holding a lone surrogate -- ``invalid_character``. The error's
    ``field`` names the place, ``messages[0].content`` style; None when all is well.
    """
    if _surely_safe(value):
        return None
    stack = [(path, value)]
    while stack:  # iterative: the parser's own recursion limit already bounds the depth
        where, item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return BadRequest("invalid_character", field=where or "body")
        elif isinstance(item, float):
            if not math.isfinite(item):
                return BadRequest("not_finite", field=where or "body")
        elif isinstance(item, dict):
            for key, child in reversed(item.items()):
                name = f"{where}.{key}" if where else str(key)
                if _SURROGATE.search(key):
                    return BadRequest("invalid_character", field=_SURROGATE.sub("?", name))
                stack.append((name, child))
        elif isinstance(item, list):
            stack.extend((f"{where}[{i}]", child) for i, child in reversed(list(enumerate(item))))
    return None


def surely_safe_text(raw: bytes, numbers: bool = True) -> bool:
    """True when the JSON text ``raw`` (bytes) cannot parse to a value holding a lone
    surrogate, nor, with ``numbers``, a non-finite number: what :func:`find_unsafe_value`
    (``numbers``) or :func:`scrub_text` would look for, told from the text with one C search
    instead of encoding the parsed value again. False when unsure (UTF-16 or UTF-32 text,
    or any of the patterns above, also inside a string): check the parsed value then.
    """
    if json.detect_encoding(raw) not in ("utf-8", "utf-8-sig"):
        return False
    return not (_MAYBE_UNSAFE if numbers else _MAYBE_SURROGATE).search(raw)


def scrub_text(value: Any) -> Any:
    """``value`` with every lone surrogate in its strings replaced by U+FFFD (what a UTF-8
    decoder does with a broken character): for answers an upstream sent, which the client
    has paid for and must not lose to an encoding error. Dicts, lists and tuples are
    copied only when something changed.
    """
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, dict | list | tuple) and _surely_clean(value):
        return value
    if isinstance(value, dict):
        cleaned = {scrub_text(key): scrub_text(item) for key, item in value.items()}
        return cleaned if cleaned != value else value
    if isinstance(value, list | tuple):
        items = type(value)(scrub_text(item) for item in value)
        return items if items != value else value
    return value


def _surely_safe(value: Any) -> bool:
    """True when ``value`` holds no lone surrogate and no non-finite number, found with one
    C-encoded ``json.dumps`` (``allow_nan=False`` refuses NaN and the infinities) and one
    search instead of a Python walk of the whole body; False when unsure: walk it for the
    exact place."""
    try:
        return not _SURROGATE.search(encoder(False, False).encode(value))
    except (TypeError, ValueError, RecursionError):
        return False


def _surely_clean(value: Any) -> bool:
    """True when no string in ``value`` holds a lone surrogate, found with one C-encoded
    ``json.dumps`` (which keeps surrogates as they are) and one search instead of a Python
    walk of the whole answer; False when unsure (not JSON-encodable: walk it)."""
    try:
        return not _SURROGATE.search(encoder(False).encode(value))
    except (TypeError, ValueError, RecursionError):
        return False
