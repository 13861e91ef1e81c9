"""The one error hierarchy, and the one place that turns any error into a face's envelope.

Routes and backends raise :class:`ServiceError` subclasses carrying an HTTP status, a stable
machine key (``rate_limited``, ``upstream_timeout``, ...) that is also the message-catalog key,
and message parameters. :func:`register_error_handlers` installs a single Flask handler that
localizes the message and asks the face owning the request path to render its envelope, so
the same error reads the same way on every face and in every language. Nothing else catches
broadly; unexpected exceptions become a 500 whose traceback goes to the log only.
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


class ServiceError(Exception):
    """Base of every error a client can see.

    :param key: catalog key of the message, also sent to clients as the stable ``error`` field.
    :param status: HTTP status; defaults to the class's.
    :param headers: extra response headers (``Retry-After``).
    :param params: values for the message template; never secrets or raw upstream text.
    """

    status: int = 500
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
        self.status = status or type(self).status
        self.headers = dict(headers or {})
        self.params = params
        super().__init__(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(key={self.key!r}, status={self.status})"


class BadRequest(ServiceError):
    """The request itself is wrong (400): bad JSON, wrong type, out of range, missing field."""

    status = 400
    key = "bad_request"


class NotFound(ServiceError):
    """No such path or resource (404)."""

    status = 404
    key = "not_found"


class MethodNotAllowed(ServiceError):
    """The path exists but not for this method (405)."""

    status = 405
    key = "method_not_allowed"


class PayloadTooLarge(ServiceError):
    """The body is larger than MAX_BODY_BYTES (413)."""

    status = 413
    key = "payload_too_large"


class RateLimited(ServiceError):
    """A per-client rate limit was hit (429); ``seconds`` is when to retry."""

    status = 429
    key = "rate_limited"

    def __init__(self, seconds: int) -> None:
        super().__init__(headers={"Retry-After": str(seconds)}, seconds=seconds)


class UpstreamError(ServiceError):
    """The upstream API failed or refused (502 by default; 401/429/400/503 by key)."""

    status = 502
    key = "upstream_error"


class UpstreamTimeout(UpstreamError):
    """The upstream API did not connect or answer within its timeout (504)."""

    status = 504
    key = "upstream_timeout"


class ClientGone(ServiceError):
    """The client hung up while its request waited for the upstream (499, nginx's code for
    it): the upstream call is abandoned and its connection closed; nobody reads the answer."""

    status = 499
    key = "client_gone"


class LocalModelError(ServiceError):
    """The embedded model is busy (queue full) or cannot be loaded (503)."""

    status = 503
    key = "local_model_busy"


class InternalError(ServiceError):
    """A bug: answered as 500 with no detail; the traceback goes to the log."""

    status = 500
    key = "internal_error"


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
