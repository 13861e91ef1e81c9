"""``GET /{ROUTE}/admin/keys``: the upstream key pool, masked, for operators.

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
from chatservice.service import current_service


def create_blueprint(route: str) -> Blueprint:
    """The admin blueprint under ``{ROUTE}/admin``."""
    blueprint = Blueprint("admin", __name__)
    blueprint.add_url_rule(f"{route}/admin/keys", view_func=keys, methods=["GET"])
    return blueprint


def keys() -> ResponseReturnValue:
    """``{"keys": [{"key": "sk-...abcd", "id", "state", "cooldown_until", "failures",
    "last_error"}]}``; 404 without ADMIN_TOKEN, 401 without the right bearer token.
    """
    service = current_service()
    token = service.settings.admin_token
    if token is None:
        raise NotFound()
    given = auth.bearer_token(request.headers)
    expected = token.get_secret_value().encode()
    if given is None or not hmac.compare_digest(given.encode(), expected):
        raise ServiceError("admin_unauthorized", headers={"WWW-Authenticate": "Bearer"})
    return jsonify(keys=service.backends.upstream.pool.snapshot())
