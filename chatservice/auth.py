"""Client authentication of the chat faces: AUTH_MODE none, simple, normal (Alice
ChatGPT's) or keys.

Alice ChatGPT defines the three modes; the headers and the hash are the original's:

- ``none``: every request is let through.
- ``simple``: header ``token`` equals AUTH_TOKEN. The OpenAI-compatible face also accepts
  ``Authorization: Bearer <AUTH_TOKEN>``, which is what its SDKs send.
- ``normal``: headers ``uuid`` (1 to 64 printable ASCII characters) and ``token`` = the
  lowercase hex SHA-256 of AUTH_TOKEN + uuid (upper case is accepted too). Each uuid is
  accepted once within AUTH_REPLAY_WINDOW seconds; it is recorded in the store (STORE_URL,
  shared by workers) only once its hash checks out, so requests with junk tokens cannot fill
  or flush the replay cache (in the original they could).
- ``keys``: every client has its own key (:mod:`chatservice.clientkeys`), sent as
  ``Authorization: Bearer <key>`` or in the ``token`` header, on every face. An unknown key is
  ``auth_failed``, a disabled one ``client_key_disabled``, an expired one
  ``client_key_expired`` (all 401); the key's record is then kept in ``flask.g`` for the
  answer pipeline (:class:`chatservice.budgets.KeyBudgets`), which applies its models,
  limits and budgets. Only the key's SHA-256 is looked up; no key is logged.

:func:`protect` installs the check as a ``before_request`` hook of one face's blueprint, so it
covers exactly that face's views, including the WebSocket handshake (a GET to the ws route)
and not ``/healthz`` or the admin view. Views marked ``auth_exempt = True`` (:func:`exempt`;
the shared-conversation view) stay open. A refusal raises :class:`ServiceError` with status 401
and one of the keys ``auth_required``, ``auth_failed``, ``auth_replayed``,
``auth_invalid_uuid``, which the app's error handler renders in the face's own envelope and
the request's language (the ``lang`` query parameter, the ``lang`` field of a JSON body of at
most 64 KiB, then Accept-Language). Comparisons are constant-time; no token, hash or uuid is logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from typing import TypeVar

from flask import Blueprint, current_app, g, request

from chatservice.budgets import G_ATTRIBUTE, ClientKeys
from chatservice.clientkeys import KeyRecord
from chatservice.errors import ServiceError
from chatservice.service import current_service
from chatservice.settings import Settings
from chatservice.state import KeyValueStore
from chatservice.web import peek_json_body

log = logging.getLogger(__name__)

TOKEN_HEADER = "token"  # noqa: S105 - a header name, not a password
UUID_HEADER = "uuid"
MAX_UUID_LENGTH = 64
#: Name of the view attribute that opts a view out of the check.
EXEMPT_ATTRIBUTE = "auth_exempt"
#: Store key of a used normal-mode uuid.
REPLAY_KEY = "auth:replay:{uuid}"
REALM = "chatservice"

# Printable ASCII only: the uuid is hashed as bytes, and a header carrying other characters
# has no single byte form both sides would agree on.
_UUID = re.compile(rf"[ -~]{{1,{MAX_UUID_LENGTH}}}")

View = TypeVar("View", bound=Callable[..., object])


def exempt(view: View) -> View:
    """Mark a view as open to clients without credentials (sets ``view.auth_exempt``)."""
    setattr(view, EXEMPT_ATTRIBUTE, True)
    return view


def protect(blueprint: Blueprint, *, bearer: bool = False) -> None:
    """Require AUTH_MODE's credentials on every view of a face's ``blueprint``.

    ``bearer``: also accept ``Authorization: Bearer <AUTH_TOKEN>`` in simple mode (the
    OpenAI-compatible face).
    """

    def check() -> None:
        if _is_exempt():
            return
        service = current_service()
        try:
            if service.settings.auth_mode == "keys":
                setattr(g, G_ATTRIBUTE, authenticate_key(service.client_keys, request.headers))
                return
            authenticate(
                service.settings, service.conversation_store, request.headers, bearer=bearer
            )
        except ServiceError as err:
            # The key says why; the credentials themselves are never logged.
            if err.status == 401:
                log.info("auth refused (%s): %s %s", err.key, request.method, request.path)
                # So the refusal can follow the body's ``lang`` field, like other errors.
                peek_json_body()
            raise

    blueprint.before_request(check)


def is_service_token(settings: Settings, value: str) -> bool:
    """True when ``value`` (a bearer a client sent) is AUTH_TOKEN, in any mode.

    The OpenAI-compatible face passes client bearers of the form ``sk-...`` upstream as keys;
    it must not pass the service's own token (in simple mode it authenticated the client),
    which no upstream should ever see. Constant-time.
    """
    secret = settings.auth_token
    if secret is None or not value:
        return False
    return _same_secret(value, secret.get_secret_value())


def _is_exempt() -> bool:
    # The request object once: each read through Flask's proxy costs Python calls.
    req = request._get_current_object()  # type: ignore[attr-defined]
    view = current_app.view_functions.get(req.endpoint or "")
    if view is not None and getattr(view, EXEMPT_ATTRIBUTE, False):
        return True
    # Flask's automatic OPTIONS answer runs no view; a CORS preflight never carries
    # credentials, so refusing it would only break browsers.
    rule = req.url_rule
    return req.method == "OPTIONS" and bool(getattr(rule, "provide_automatic_options", False))


def authenticate(
    settings: Settings,
    store: KeyValueStore,
    headers: Mapping[str, str],
    *,
    bearer: bool = False,
) -> None:
    """Check one request's credentials against ``settings.auth_mode``.

    ``headers`` are the request's (case-insensitive, like werkzeug's ``Headers``);
    ``store`` receives the normal-mode uuids (``auth:replay:<uuid>``, TTL AUTH_REPLAY_WINDOW).
    ``bearer``: accept ``Authorization: Bearer <AUTH_TOKEN>`` in simple mode.

    Returns None when the request may proceed; raises :class:`ServiceError` (401) with key
    ``auth_required`` (no credentials), ``auth_failed`` (wrong token or hash),
    ``auth_invalid_uuid`` (empty, longer than 64 characters, or not printable ASCII) or
    ``auth_replayed`` (uuid already used), and ``store_unavailable`` (503) when the store
    fails.
    """
    mode = settings.auth_mode
    if mode == "none":
        return
    secret = settings.auth_token
    if secret is None:  # Settings refuses this at startup; fail closed all the same.
        raise ServiceError("auth_failed", headers=_challenge(bearer, failed=True))
    if mode == "simple":
        _check_simple(secret.get_secret_value(), headers, bearer=bearer)
    else:
        _check_normal(secret.get_secret_value(), settings.auth_replay_window, store, headers)


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme in any case, spaces
    around the token dropped), or ``None`` without one."""
    return bearer_of(headers.get("Authorization", ""))


def bearer_of(authorization: str) -> str | None:
    """The token of an ``Authorization`` header's value ``Bearer <token>`` (see
    :func:`bearer_token`), or ``None`` for another scheme or an empty value."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def authenticate_key(keys: ClientKeys | None, headers: Mapping[str, str]) -> KeyRecord:
    """AUTH_MODE=keys: the record of the client key in ``Authorization: Bearer`` or ``token``.

    Raises 401 ``auth_required`` (no key sent), ``auth_failed``, ``client_key_disabled``,
    ``client_key_expired``; 503 ``store_unavailable``.
    """
    key = bearer_token(headers) or headers.get(TOKEN_HEADER, "").strip()
    if not key:
        raise ServiceError("auth_required", headers=_challenge(True))
    if keys is None:  # the factory always sets them; fail closed all the same
        raise ServiceError("auth_failed", headers=_challenge(True, failed=True))
    try:
        return keys.authenticate(key)
    except ServiceError as err:
        if err.status == 401:
            err.headers.update(_challenge(True, failed=True))
        raise


def _check_simple(secret: str, headers: Mapping[str, str], *, bearer: bool) -> None:
    given = [headers.get(TOKEN_HEADER, "")]
    if bearer:
        given.append(bearer_token(headers) or "")
    given = [value for value in given if value]
    if not given:
        raise ServiceError("auth_required", headers=_challenge(bearer))
    # Check every candidate, so the time taken does not tell which header matched.
    matches = [_same_secret(value, secret) for value in given]
    if not any(matches):
        raise ServiceError("auth_failed", headers=_challenge(bearer, failed=True))


def _check_normal(
    secret: str, window: float, store: KeyValueStore, headers: Mapping[str, str]
) -> None:
    token = headers.get(TOKEN_HEADER)
    uuid = headers.get(UUID_HEADER)
    if not token or uuid is None:
        raise ServiceError("auth_required")
    if not _UUID.fullmatch(uuid):
        raise ServiceError("auth_invalid_uuid", max=MAX_UUID_LENGTH)
    expected = hashlib.sha256((secret + uuid).encode("utf-8")).hexdigest()
    if not hmac.compare_digest(_wire(token.lower()), expected.encode("ascii")):
        raise ServiceError("auth_failed")
    # Recorded only now: a uuid seen with a wrong hash stays usable, and junk cannot evict
    # or crowd out the real entries.
    if not store.add(REPLAY_KEY.format(uuid=uuid), "1", ttl=window):
        raise ServiceError("auth_replayed")


def _same_secret(given: str, secret: str) -> bool:
    # Comparing digests keeps even the secret's length out of the timing.
    return hmac.compare_digest(
        hashlib.sha256(_wire(given)).digest(), hashlib.sha256(secret.encode("utf-8")).digest()
    )


def _wire(value: str) -> bytes:
    # Header values may hold any character; compare_digest only takes ASCII str or bytes.
    return value.encode("utf-8", "backslashreplace")


def _challenge(bearer: bool, *, failed: bool = False) -> dict[str, str]:
    """``WWW-Authenticate`` for the OpenAI-compatible face (RFC 6750), whose clients speak
    Bearer; the other faces use the original's own headers, which have no registered scheme.
    """
    if not bearer:
        return {}
    challenge = f'Bearer realm="{REALM}"'
    if failed:
        challenge += ', error="invalid_token"'
    return {"WWW-Authenticate": challenge}
