"""``GET /{ROUTE}/admin/keys`` (the upstream key pool, masked) and ``GET
/{ROUTE}/admin/upstreams`` (every upstream with its breaker, keys and counts), for operators.

Served only when ADMIN_TOKEN is set, to requests carrying ``Authorization: Bearer
<ADMIN_TOKEN>`` (compared in constant time). Keys are shown masked (``sk-...abcd``) with
their state, failure count and last error type, never in full.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, jsonify, request
from flask.typing import ResponseReturnValue

from chatservice import auth
from chatservice.errors import NotFound, ServiceError
from chatservice.service import Service, current_service


def create_blueprint(route: str) -> Blueprint:
    """The admin blueprint under ``{ROUTE}/admin``."""
    blueprint = Blueprint("admin", __name__)
    blueprint.add_url_rule(f"{route}/admin/keys", view_func=keys, methods=["GET"])
    blueprint.add_url_rule(f"{route}/admin/upstreams", view_func=upstreams, methods=["GET"])
    return blueprint


def keys() -> ResponseReturnValue:
    """``{"keys": [{"key": "sk-...abcd", "id", "state", "cooldown_until", "failures",
    "last_error"}]}``; 404 without ADMIN_TOKEN, 401 without the right bearer token.
    """
    service = _authorized()
    return jsonify(keys=service.backends.upstream.pool.snapshot())


def upstreams() -> ResponseReturnValue:
    """``{"upstreams": [{"name", "type", "host", "models", "model_map", "priority",
    "weight", "breaker", "breaker_until", "keys": [masked keys as in /admin/keys],
    "requests", "failures", "latency_p50_ms"}]}`` (the counts: the answering worker's since
    it started; the breakers and key states: shared). Errors as :func:`keys`.
    """
    service = _authorized()
    return jsonify(upstreams=service.backends.router.snapshot())


def _authorized() -> Service:
    """The service, when the request carries ADMIN_TOKEN; raises 404/401 otherwise."""
    service = current_service()
    token = service.settings.admin_token
    if token is None:
        raise NotFound()
    given = auth.bearer_token(request.headers)
    expected = token.get_secret_value().encode()
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise ServiceError("admin_unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return service
