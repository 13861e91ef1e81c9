"""The Playground: a chat page served by the service itself (none of the wrapper services has one).

- ``GET {ROUTE}/playground``: the page, ``chatservice/static/playground/index.html``.
- ``GET {ROUTE}/playground/static/<file>``: its stylesheet and script (plain JavaScript, no
  framework, no build step), found relative to the page, so any ROUTE works.
- ``GET {ROUTE}/playground/config.json``: what the page must know about this server,
  ``{"route", "auth_mode", "default_model", "default_lang"}``; never a token.
- ``GET /`` redirects to the page when ROUTE is not empty (with an empty ROUTE, ``/`` is the
  ``/api`` face's own path).

The page talks to the OpenAI-compatible face (``{ROUTE}/v1/models`` and streamed
``{ROUTE}/v1/chat/completions``) like any other client, so rate limits, AUTH_MODE and the
localized errors apply to its chats; the page itself is neither rate limited nor behind
AUTH_MODE (it asks for the token in the browser instead). The factory registers this
blueprint only when PLAYGROUND is on.

Every response carries a Content-Security-Policy that allows scripts, styles and connections
to this origin only (no inline script), ``X-Content-Type-Options: nosniff`` and no referrer.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, jsonify, redirect, send_from_directory, url_for

from chatservice.service import current_service

#: The page's files, shipped inside the package.
STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "playground"

#: Scripts, styles and fetches from this origin only; nothing inline, no framing, no <base>.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def page_path(route: str) -> str:
    """The page's path for a normalised ROUTE: ``"/api"`` -> ``"/api/playground"``."""
    return f"{route}/playground"


def create_blueprint(route: str) -> Blueprint:
    """The Playground's blueprint for a normalised ROUTE (``""`` or ``"/name"``)."""
    base = page_path(route)
    blueprint = Blueprint(
        "playground", __name__, static_folder=str(STATIC_DIR), static_url_path=f"{base}/static"
    )
    blueprint.add_url_rule(base, view_func=page, methods=["GET"])
    # The assets are linked relative to the page ("playground/static/..."), which a trailing
    # slash would break: send that spelling to the real one.
    blueprint.add_url_rule(f"{base}/", view_func=to_page, methods=["GET"])
    blueprint.add_url_rule(f"{base}/config.json", view_func=config, methods=["GET"])
    if route:
        blueprint.add_url_rule("/", view_func=to_page, methods=["GET"])
    blueprint.after_request(secure)
    return blueprint


def page() -> Response:
    """``GET {ROUTE}/playground``: the page."""
    return send_page(STATIC_DIR)


def send_page(directory: Path) -> Response:
    """``directory``'s ``index.html``, revalidated on every load so upgrades show (the
    playground and the admin page)."""
    response = send_from_directory(directory, "index.html")
    response.headers["Cache-Control"] = "no-cache"
    return response


def to_page() -> Response:
    """``GET /`` (ROUTE not empty) and ``GET {ROUTE}/playground/``: 302 to the page."""
    return redirect(url_for("playground.page"))


def config() -> Response:
    """``GET {ROUTE}/playground/config.json``: the settings the page needs, and no secret.

    ``route`` prefixes the API paths; ``auth_mode`` (none, simple, normal, keys) tells whether to
    ask for the token and how to send it; ``default_model`` is preselected when the server
    lists it; ``default_lang`` (CHAT_LANG) labels the page when the browser asks for no
    language the page knows, as the service's messages do.
    """
    settings = current_service().settings
    response = jsonify(
        route=settings.route,
        auth_mode=settings.auth_mode,
        default_model=settings.default_model,
        default_lang=settings.default_lang,
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def secure(response: Response) -> Response:
    """``response`` with :data:`SECURITY_HEADERS` (the pages' strict CSP)."""
    response.headers.update(SECURITY_HEADERS)
    return response
