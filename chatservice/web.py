"""Per-request helpers shared by the faces: reading the JSON body and choosing the language."""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, g, request

from chatservice.body import request_body
from chatservice.errors import BadRequest
from chatservice.i18n import negotiate
from chatservice.jsonsafe import find_unsafe_value, surely_safe_text


def read_json_object() -> dict[str, Any]:
    """The request body parsed as a JSON object, whatever the Content-Type says.

    The wrapper services' clients send ``application/json``; ``curl -d`` sends a form type with
    a JSON body, so the header is not required. Raises ``BadRequest`` (``invalid_json``,
    ``body_not_object``); a body over MAX_BODY_BYTES was refused with 413 before the face ran
    (:mod:`chatservice.body`).
    """
    raw = request_body()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: JSON nested deeper than the parser's recursion allows.
        raise BadRequest("invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("body_not_object")
    unsafe = None if surely_safe_text(raw) else find_unsafe_value(body)
    if unsafe is not None:
        raise unsafe
    g.json_body = body
    return body


#: Largest body an unauthenticated request gets parsed for its ``lang`` field: enough for
#: any ordinary chat request, small enough that refusing junk stays cheap.
PEEK_BODY_BYTES = 64 * 1024


def peek_json_body() -> None:
    """Parse a small JSON object body for :func:`request_language`, if not done yet.

    For errors raised before a face reads the body (authentication): a body that is absent,
    over :data:`PEEK_BODY_BYTES` (by Content-Length), not JSON or not an object is ignored,
    never an error.
    """
    length = request.content_length
    if "json_body" in g or not length or length > PEEK_BODY_BYTES:
        return
    try:
        body = json.loads(request_body())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return
    if isinstance(body, dict):
        g.json_body = body


def request_language() -> str:
    """The language of this request's messages (the order of the settings' documentation).

    ``lang`` query parameter, then the ``lang`` field of a JSON body already read, then
    ``Accept-Language`` in quality order, then the configured default.
    """
    body = g.get("json_body")
    body_lang = body.get("lang") if isinstance(body, dict) else None
    candidates = [request.args.get("lang"), body_lang if isinstance(body_lang, str) else None]
    accept = [tag for tag, _quality in request.accept_languages]
    return negotiate(
        candidates, accept, current_app.extensions["chatservice"].settings.default_lang
    )
