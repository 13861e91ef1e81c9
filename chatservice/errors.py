"""The one error registry and hierarchy, and the one place that turns any error into a face's
envelope.

:data:`ERRORS` lists every stable machine key a client can see (``rate_limited``,
``upstream_timeout``, ...) with its HTTP status; the key is also the message-catalog key
(i18n/*.json has a message for each in every language, and the README's error table lists
them: tests hold the three together). Routes and backends raise :class:`ServiceError`
subclasses with a registered key (an unknown one raises ``ValueError``: a bug) and message
parameters; the status comes from the registry. :func:`register_error_handlers` installs a
single Flask handler that localizes the message and asks the face owning the request path to
render its envelope, so the same error reads the same way on every face and in every
language. Nothing else catches broadly; unexpected exceptions become a 500 whose traceback
goes to the log only.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, current_app, g, jsonify, request
from flask_limiter.errors import RateLimitExceeded
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

#: Every error key, with its HTTP status. ``http_error`` has none of its own: it stands for
#: whatever other 4xx werkzeug raised (the raise gives the status).
ERRORS: dict[str, int | None] = {
    # The request is wrong.
    "bad_request": 400,
    "invalid_json": 400,
    "body_not_object": 400,
    "missing_field": 400,
    "empty_field": 400,
    "not_a_string": 400,
    "not_an_integer": 400,
    "not_a_positive_integer": 400,
    "not_a_number": 400,
    "not_a_boolean": 400,
    "not_a_list": 400,
    "invalid_message": 400,
    "invalid_role": 400,
    "invalid_chat_message": 400,
    "invalid_prompt": 400,
    "invalid_stop": 400,
    "invalid_api_key": 400,
    "out_of_range": 400,
    "query_or_messages": 400,
    "model_not_allowed": 400,
    "upstream_bad_request": 400,
    "context_length_exceeded": 400,
    "invalid_room_id": 400,
    "invalid_turn_role": 400,
    "ws_invalid_frame": 400,
    "ws_invalid_seq": 400,
    "ws_invalid_data": 400,
    "conversation_header_missing": 400,
    "empty_question": 400,
    "empty_text": 400,
    "invalid_text_body": 400,
    "unknown_settings": 400,
    "invalid_conv_type": 400,
    "invalid_examples": 400,
    "invalid_name": 400,
    "invalid_chat_role": 400,
    "invalid_content": 400,
    "invalid_content_part": 400,
    "invalid_tool_calls": 400,
    "not_an_object": 400,
    "invalid_choice": 400,
    "invalid_tool": 400,
    "invalid_tool_choice": 400,
    "unknown_tool": 400,
    "requires_field": 400,
    "unsupported_parameter": 400,
    "invalid_key_name": 400,
    "invalid_model_patterns": 400,
    "invalid_date": 400,
    "invalid_time": 400,
    "not_finite": 400,
    "invalid_character": 400,
    "invalid_body": 400,
    "invalid_embedding_input": 400,
    "invalid_encoding_format": 400,
    # Credentials.
    "upstream_unauthorized": 401,
    "auth_required": 401,
    "auth_failed": 401,
    "auth_replayed": 401,
    "auth_invalid_uuid": 401,
    "admin_unauthorized": 401,
    "client_key_disabled": 401,
    "client_key_expired": 401,
    "model_not_allowed_for_key": 403,
    "upstream_refused": 403,
    # Paths, methods, sizes, protocols.
    "not_found": 404,
    "model_not_found": 404,
    "conversation_not_found": 404,
    "shared_conversation_not_found": 404,
    "client_key_not_found": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "conversation_busy": 409,
    "conversation_empty": 409,
    "chat_room_busy": 409,
    "client_key_name_taken": 409,
    "payload_too_large": 413,
    "uri_too_long": 414,
    "ws_upgrade_required": 426,
    "headers_too_large": 431,
    "http_error": None,
    # Too many requests.
    "rate_limited": 429,
    "upstream_rate_limited": 429,
    "upstream_quota": 429,
    "server_busy": 429,
    "key_rate_limited": 429,
    "key_tokens_limited": 429,
    "budget_exhausted": 429,
    # nginx's code for a client that hung up; only the access log shows it.
    "client_gone": 499,
    # The service or what it depends on failed.
    "internal_error": 500,
    "upstream_error": 502,
    "upstream_unreachable": 502,
    "upstream_bad_response": 502,
    "upstream_interrupted": 502,
    "no_upstream_key": 503,
    "upstreams_unavailable": 503,
    "upstream_overloaded": 503,
    "local_model_busy": 503,
    "local_model_unavailable": 503,
    "store_unavailable": 503,
    "upstream_timeout": 504,
}


def status_of(key: str) -> int | None:
    """The HTTP status registered for ``key`` (``None`` for ``http_error``).

    Raises ``ValueError`` for a key that is not in :data:`ERRORS`.
    """
    try:
        return ERRORS[key]
    except KeyError:
        raise ValueError(f"unregistered error key {key!r}: add it to errors.ERRORS") from None


class ServiceError(Exception):
    """Base of every error a client can see.

    :param key: a key of :data:`ERRORS` (default: the class's), the catalog key of the
        message, also sent to clients as the stable ``error`` field.
    :param status: HTTP status; only for ``http_error``, every other key has its registered
        status.
    :param headers: extra response headers (``Retry-After``).
    :param params: values for the message template; never secrets or raw upstream text.
    :raises ValueError: ``key`` is not registered, or ``status`` contradicts the registry.
    """

    key: str = "internal_error"

    def __init__(
        self,
        key: str | None = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> None:
        self.key = key or type(self).key
        registered = status_of(self.key)
        if registered is not None and status not in (None, registered):
            raise ValueError(f"error key {self.key!r} has status {registered}, not {status}")
        self.status = registered or status or 500
        self.headers = dict(headers or {})
        self.params = params
        super().__init__(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, status={self.status})"


class BadRequest(ServiceError):
    """The request itself is wrong (400): bad JSON, wrong type, out of range, missing field."""

    key = "bad_request"


class NotFound(ServiceError):
    """No such path or resource (404)."""

    key = "not_found"


class MethodNotAllowed(ServiceError):
    """The path exists but not for this method (405)."""

    key = "method_not_allowed"


class PayloadTooLarge(ServiceError):
    """The body is larger than MAX_BODY_BYTES (413)."""

    key = "payload_too_large"


class RateLimited(ServiceError):
    """A per-client rate limit was hit (429); ``seconds`` is when to retry."""

    key = "rate_limited"

    def __init__(self, seconds: int) -> None:
        super().__init__(headers={"Retry-After": str(seconds)}, seconds=seconds)


class UpstreamError(ServiceError):
    """The upstream API failed or refused (502 by default; 401/429/400/503 by key)."""

    key = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream API did not connect or answer within its timeout (504)."""

    key = "upstream_timeout"


class ClientGone(ServiceError):
    """The client hung up while its request waited for the upstream (499, nginx's code for
    it): the upstream call is abandoned and its connection closed; nobody reads the answer."""

    key = "client_gone"


class LocalModelError(ServiceError):
    """The embedded model is busy (queue full) or cannot be loaded (503)."""

    key = "local_model_busy"


class InternalError(ServiceError):
    """A bug: answered as 500 with no detail; the traceback goes to the log."""

    key = "internal_error"


def context_length_exceeded(limit: int | None, tokens: int | None) -> BadRequest:
    """400 ``context_length_exceeded``: the model holds ``limit`` tokens, the request needed
    ``tokens``. Its English message is OpenAI's own wording, which clients such as LiteLLM
    match to fall back on a model with a larger context; an unknown count reads ``?``.
    """
    return BadRequest(
        "context_length_exceeded",
        limit="?" if limit is None else limit,
        tokens="?" if tokens is None else tokens,
    )


#: Renders one face's error body: (error, localized message) -> a JSON-able dict, or a
#: string for faces that answer plain text (Alice ChatGPT's conversations).
ErrorRenderer = Callable[[ServiceError, str], dict[str, Any] | str]


def to_service_error(exc: BaseException) -> ServiceError:
    """Convert anything raised while handling a request to a :class:`ServiceError`.

    werkzeug's HTTP exceptions map to their own keys; flask-limiter's ``RateLimitExceeded``
    becomes :class:`RateLimited` with the seconds until the window frees up.
    """
    if isinstance(exc, ServiceError):
        return exc
    if isinstance(exc, RateLimitExceeded):
        return RateLimited(_retry_after_seconds())
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        if code == 404:
            return NotFound()
        if code == 405:
            # RFC 9110 15.5.6: a 405 names the methods the path does allow.
            allowed = ", ".join(sorted(getattr(exc, "valid_methods", None) or ()))
            return MethodNotAllowed(
                method=request.method, headers={"Allow": allowed} if allowed else None
            )
        if code == 413:
            return PayloadTooLarge(limit=current_app.config.get("MAX_CONTENT_LENGTH"))
        if code == 400:
            # Bodies are parsed by the faces themselves (web.read_json_object), so a werkzeug
            # 400 is something else: a malformed request line, a websocket mismatch.
            return BadRequest()
        if code >= 500:
            return InternalError()
        return ServiceError("http_error", status=code, status_code=code)
    log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
    return InternalError()


def _retry_after_seconds() -> int:
    limiter = current_app.extensions.get("chatservice.limiter")
    current = getattr(limiter, "current_limit", None)
    # window.reset_time is exact; RequestLimit.reset_at rounds it up by a whole second.
    reset = None if current is None else current.window.reset_time
    seconds = 1 if reset is None else max(1, math.ceil(reset - time.time()))
    # flask-limiter recomputes Retry-After later; limits.py puts this value back so the
    # header and the message agree.
    g.retry_after = seconds
    return seconds


class FaceRegistry:
    """Which face owns which path, so errors outside any view (404, 405, 413 while routing)
    still come back in the envelope a client of that path expects.
    """

    def __init__(self, default: ErrorRenderer) -> None:
        self._default = default
        self._faces: list[tuple[str, bool, ErrorRenderer]] = []

    def register(self, prefix: str, renderer: ErrorRenderer, exact: bool = False) -> None:
        """Claim ``prefix`` (with or without a trailing slash) and, unless ``exact``, every
        path below it.
        """
        self._faces.append((prefix.rstrip("/"), exact, renderer))
        self._faces.sort(key=lambda face: len(face[0]), reverse=True)

    def renderer_for(self, path: str) -> ErrorRenderer:
        """The renderer of the longest registered prefix of ``path``."""
        path = path.rstrip("/")
        for prefix, exact, renderer in self._faces:
            if path == prefix or (not exact and path.startswith(prefix + "/")):
                return renderer
        return self._default


def error_response(err: ServiceError, renderer: ErrorRenderer, lang: str) -> Response:
    """The HTTP response for ``err`` in a face's envelope, message in ``lang``."""
    catalogs = current_app.extensions["chatservice.catalogs"]
    message = catalogs.translate(err.key, lang, **err.params)
    body = renderer(err, message)
    response = Response(body, mimetype="text/plain") if isinstance(body, str) else jsonify(body)
    response.status_code = err.status
    response.headers.update(err.headers)
    return response


def register_error_handlers(app: Flask, faces: FaceRegistry, language: Callable[[], str]) -> None:
    """Install the one handler for every exception; ``language`` picks the request's language."""

    def handle(exc: Exception) -> Response:
        err = to_service_error(exc)
        return error_response(err, faces.renderer_for(request.path), language())

    app.register_error_handler(Exception, handle)
