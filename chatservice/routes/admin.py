"""The admin API under ``/{ROUTE}/admin``, for operators holding ADMIN_TOKEN.

Served only when ADMIN_TOKEN is set (404 otherwise), to requests carrying ``Authorization:
Bearer <ADMIN_TOKEN>`` (compared in constant time; 401 ``admin_unauthorized`` otherwise).

- ``GET keys``: the upstream key pool, masked (``sk-...abcd``), with each key's state,
  failure count and last error type.
- ``GET upstreams``: every upstream with its breaker, keys (masked) and counts.
- ``GET|POST client-keys``, ``GET|PATCH|DELETE client-keys/<id or name>``: the client keys of
  AUTH_MODE=keys (:mod:`chatservice.clientkeys`). Creating answers 201 with the key in full
  (``"key": "csk-..."``), the only time it is ever shown; every other answer shows it masked.
- ``GET usage?key=&model=&from=&to=&format=json|csv``: the usage rows per day, key and model
  (:mod:`chatservice.usage`).

Bodies are JSON objects; bad fields get 400 with the field named, in the request's language.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, jsonify, request
from flask.typing import ResponseReturnValue

from chatservice import auth, clientkeys, usage
from chatservice.budgets import ClientKeys
from chatservice.clientkeys import KeyRecord
from chatservice.errors import NotFound, ServiceError
from chatservice.service import current_service
from chatservice.web import read_json_object


def create_blueprint(route: str) -> Blueprint:
    """The admin blueprint under ``{ROUTE}/admin``."""
    blueprint = Blueprint("admin", __name__)
    base = f"{route}/admin"
    blueprint.add_url_rule(f"{base}/keys", view_func=keys, methods=["GET"])
    blueprint.add_url_rule(f"{base}/upstreams", view_func=upstreams, methods=["GET"])
    blueprint.add_url_rule(
        f"{base}/client-keys", view_func=list_client_keys, methods=["GET"], strict_slashes=False
    )
    blueprint.add_url_rule(
        f"{base}/client-keys", view_func=create_client_key, methods=["POST"], strict_slashes=False
    )
    item = f"{base}/client-keys/<ref>"
    blueprint.add_url_rule(item, view_func=get_client_key, methods=["GET"])
    blueprint.add_url_rule(item, view_func=update_client_key, methods=["PATCH"])
    blueprint.add_url_rule(item, view_func=delete_client_key, methods=["DELETE"])
    blueprint.add_url_rule(f"{base}/usage", view_func=usage_report, methods=["GET"])
    blueprint.before_request(require_admin)
    return blueprint


def require_admin() -> None:
    """404 without ADMIN_TOKEN, 401 ``admin_unauthorized`` without the right bearer token."""
    token = current_service().settings.admin_token
    if token is None:
        raise NotFound()
    given = auth.bearer_token(request.headers)
    expected = token.get_secret_value().encode()
    if given is None or not hmac.compare_digest(
        given.encode("utf-8", "backslashreplace"), expected
    ):
        raise ServiceError("admin_unauthorized", headers={"WWW-Authenticate": "Bearer"})


def keys() -> ResponseReturnValue:
    """Every upstream's keys, masked: ``{"keys": [{"upstream", "key": "sk-...abcd", "id",
    "state", "cooldown_until", "failures", "last_error"}], "upstreams": {name: [the same
    rows without "upstream"]}}`` (every remote upstream, keyless ones with ``[]``; the same
    key at two upstreams has a state at each).
    """
    grouped = {
        upstream.name: upstream.route.backend.pool.snapshot()
        for upstream in current_service().backends.remote()
    }
    rows = [{"upstream": name, **row} for name, pool in grouped.items() for row in pool]
    return jsonify(keys=rows, upstreams=grouped)


def upstreams() -> ResponseReturnValue:
    """``{"upstreams": [{"name", "type", "host", "models", "model_map", "priority",
    "weight", "breaker", "breaker_until", "keys": [masked keys as in /admin/keys],
    "requests", "failures", "latency_p50_ms"}]}`` (the counts: the answering worker's since
    it started; the breakers and key states: shared).
    """
    return jsonify(upstreams=current_service().backends.router.snapshot())


def _keys() -> ClientKeys:
    client_keys = current_service().client_keys
    assert client_keys is not None  # noqa: S101 - the factory always sets it
    return client_keys


def _shown(record: KeyRecord) -> dict[str, object]:
    return {**record.public(), "spent": _keys().spent(record)}


def list_client_keys() -> ResponseReturnValue:
    """``{"keys": [key, ...]}``, oldest first, each as :meth:`KeyRecord.public` plus
    ``spent`` (``{"total", "today", "this_month"}`` tokens).
    """
    return jsonify(keys=[_shown(record) for record in _keys().all()])


def create_client_key() -> ResponseReturnValue:
    """201 with the new key's fields and ``key`` in full (shown this once); 400 for a bad
    field, 409 ``client_key_name_taken``.
    """
    fields = clientkeys.parse_settings(read_json_object(), creating=True)
    key, record = _keys().create(fields)
    response = jsonify({**_shown(record), "key": key})
    response.status_code = 201
    response.headers["Cache-Control"] = "no-store"
    return response


def get_client_key(ref: str) -> ResponseReturnValue:
    """One key by id or name (404 ``client_key_not_found``)."""
    return jsonify(_shown(_keys().find(ref)))


def update_client_key(ref: str) -> ResponseReturnValue:
    """Change the fields the body names (``{"enabled": false}`` disables the key); the key
    with its new fields. Every instance sees the change on its next request.
    """
    fields = clientkeys.parse_settings(read_json_object(), creating=False)
    return jsonify(_shown(_keys().update(ref, fields)))


def delete_client_key(ref: str) -> ResponseReturnValue:
    """204; the key is refused from now on (its usage rows stay)."""
    _keys().delete(ref)
    return Response(status=204)


def usage_report() -> ResponseReturnValue:
    """The usage rows as JSON (``{"from", "to", "rows": [...], "totals"}``) or CSV."""
    report = usage.query(_keys(), request.args)
    if report.format == "csv":
        response = Response(usage.to_csv(report), mimetype="text/csv")
        response.headers["Content-Disposition"] = 'attachment; filename="usage.csv"'
        return response
    return jsonify(usage.to_json(report))
