"""The application factory (Flask's tutorial pattern).

:func:`create_app` wires settings, catalogs, backends, rate limits, faces and the error handler
into a new app, so nothing is created at import time and every test builds an app with its
own settings.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import FunctionType
from typing import Any

from flask import Flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.middleware.proxy_fix import ProxyFix

from chatservice import auth, body, cache, http_headers, metrics
from chatservice.access_log import AccessRecord, init_access_log
from chatservice.backends import Backends
from chatservice.budgets import ClientKeys, KeyBudgets
from chatservice.errors import FaceRegistry, register_error_handlers
from chatservice.i18n import Catalogs
from chatservice.jsonsafe import encoder
from chatservice.keystore import create_key_store
from chatservice.limits import create_limiter, limit_face
from chatservice.logs import configure_logging
from chatservice.pipeline import Pipeline
from chatservice.routes import (
    admin,
    admin_page,
    api,
    chat,
    chatroom,
    conversations,
    docs,
    openai_api,
    ops,
    playground,
    ws,
)
from chatservice.service import Service
from chatservice.settings import ConfigError, Settings
from chatservice.state import KeyValueStore, open_store
from chatservice.web import request_language

#: The chat faces, each a module with ``prefix``, ``create_blueprint`` and ``render_error``.
FACES = (api, chat, openai_api, chatroom, ws, conversations)


#: The keyword arguments Flask's JSON provider dumps its responses with outside debug mode.
_COMPACT = {"separators": (",", ":")}


class JsonProvider(DefaultJSONProvider):
    """Flask's JSON provider, keys in their order and UTF-8 rather than ``\\u`` escapes; its
    compact responses (every ``jsonify`` outside debug mode) are encoded by one shared
    encoder (:func:`chatservice.jsonsafe.encoder`), not by one ``json.dumps`` builds per call.
    """

    ensure_ascii = False
    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """``obj`` as JSON (Flask's :meth:`DefaultJSONProvider.dumps`, same text)."""
        if kwargs == _COMPACT:
            return encoder(
                self.ensure_ascii, True, self.default, _COMPACT["separators"], self.sort_keys
            ).encode(obj)
        return super().dumps(obj, **kwargs)


class App(Flask):
    """Flask, deciding :meth:`ensure_sync` without :mod:`inspect` for plain functions.

    Flask asks ``inspect.iscoroutinefunction`` of every hook and view on every request (about
    eight Python calls each, some eight functions per chat request). A plain function's code
    flags answer the same question at once; anything else (bound methods, partials, async
    views) goes to Flask's own check.
    """

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        """``func`` itself when it is a plain, non-async function, else Flask's answer."""
        if (
            func.__class__ is FunctionType
            and not func.__code__.co_flags & inspect.CO_COROUTINE  # type: ignore[attr-defined]
            # Python 3.12's inspect.markcoroutinefunction marks a sync function as async.
            and not hasattr(func, "_is_coroutine_marker")
        ):
            return func
        return super().ensure_sync(func)

    json_provider_class = JsonProvider


def open_conversation_store(settings: Settings) -> KeyValueStore:
    """The store at STORE_URL; raises ``ConfigError`` (one line naming STORE_URL and the
    file) when a SQLite store cannot be created or written.
    """
    try:
        return open_store(settings.store_url, settings.memory_max_entries)
    except OSError as exc:
        raise ConfigError(f"STORE_URL: {exc}") from None


def create_app(settings: Settings | None = None) -> Flask:
    """Build the WSGI app from ``settings`` (default: :meth:`Settings.from_env`).

    Raises :class:`~chatservice.settings.ConfigError` for invalid settings and ``OSError``
    when the message catalogs cannot be read.
    """
    settings = settings or Settings.from_env()
    configure_logging(settings)
    app = App(__name__)
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    body.init_app(app, settings.max_body_bytes, settings.body_read_timeout)
    if settings.trusted_proxies:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies)  # type: ignore[method-assign]

    catalogs = Catalogs.load()
    faces = FaceRegistry(default=api.render_error)
    shared_state = open_store(settings.shared_state_url, settings.memory_max_entries)
    backends = Backends(settings, shared_state)
    pipeline = Pipeline(settings, backends, catalogs)
    pipeline.observe(AccessRecord(pipeline.tokens))
    service = Service(
        settings=settings,
        catalogs=catalogs,
        backends=backends,
        pipeline=pipeline,
        faces=faces,
        shared_state=shared_state,
        conversation_store=open_conversation_store(settings),
    )
    app.extensions["chatservice"] = service
    app.extensions["chatservice.catalogs"] = catalogs
    metrics.init_app(app, service)
    # The client keys live in STORE_URL too (tables or keys of their own).
    service.client_keys = ClientKeys(create_key_store(settings.store_url), settings)
    if settings.auth_mode == "keys":
        service.pipeline.observe(KeyBudgets(service.client_keys, metrics.current_metrics_of(app)))

    limiter = create_limiter(app, settings)
    blueprints = [(face, face.create_blueprint(settings.route)) for face in FACES]
    http_headers.init_app(app, settings, limiter, frozenset(bp.name for _, bp in blueprints))
    for face, blueprint in blueprints:
        limit_face(limiter, settings, blueprint)
        # Per face, so /healthz and the admin view (ADMIN_TOKEN) stay outside AUTH_MODE;
        # with AUTH_MODE=none the check would let every request through: no hook at all.
        if settings.auth_mode != "none":
            auth.protect(blueprint, bearer=face is openai_api)
        app.register_blueprint(blueprint)
        faces.register(
            face.prefix(settings.route), face.render_error, exact=getattr(face, "EXACT", False)
        )
    app.register_blueprint(admin.create_blueprint(settings.route))
    app.register_blueprint(admin_page.create_blueprint(settings.route))
    app.register_blueprint(ops.create_blueprint())
    app.register_blueprint(docs.create_blueprint())  # /openapi.json, /docs: no limit, no auth
    # The page is not a chat face: no rate limit and no AUTH_MODE check on loading it.
    if settings.playground:
        app.register_blueprint(playground.create_blueprint(settings.route))
    cache.init_app(app, service.pipeline.cache)
    register_error_handlers(app, faces, request_language)
    init_access_log(app)

    if settings.local_preload:
        service.backends.local.preload()
    return app
