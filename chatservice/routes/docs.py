"""``GET /openapi.json`` and ``GET /docs``: the API description, outside ROUTE.

Neither is rate limited nor behind AUTH_MODE (the factory applies both per chat face, not to
this blueprint): the description of an API is public even when its use is not. The document is
:func:`chatservice.openapi.build_document` for the app's settings, serialized once per app.
``/docs`` is a small page shipped in ``chatservice/static/docs/`` (our own plain JavaScript, no
CDN, no third-party code) that fetches ``openapi.json`` and renders its operations,
parameters, bodies, responses and schemas; its assets are served by Flask's ``static`` route.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app

from chatservice.openapi import build_document
from chatservice.service import current_service

#: Where the page and its assets live (served as ``/static/docs/...``).
DOCS_DIR = Path(__file__).resolve().parent.parent / "static" / "docs"
_CACHE_KEY = "chatservice.openapi"
#: The page runs only its own script and style, fetches only this origin, and is never framed.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def create_blueprint() -> Blueprint:
    """The blueprint: ``GET /openapi.json`` and ``GET /docs``, at the root."""
    blueprint = Blueprint("docs", __name__)
    blueprint.add_url_rule("/openapi.json", view_func=openapi_json, methods=["GET"])
    blueprint.add_url_rule("/docs", view_func=docs_page, methods=["GET"])
    return blueprint


def openapi_json() -> Response:
    """The OpenAPI 3.1 document of this app, ``application/json``."""
    body = current_app.extensions.get(_CACHE_KEY)
    if body is None:
        # Built on first use, not at startup: a worker that never serves it pays nothing.
        document = build_document(current_service().settings)
        body = current_app.json.dumps(document).encode("utf-8")
        current_app.extensions[_CACHE_KEY] = body
    return Response(body, mimetype="application/json")


def docs_page() -> Response:
    """The human-readable page (``text/html``); it loads ``openapi.json`` relative to itself."""
    html = (DOCS_DIR / "index.html").read_bytes()
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    return response
