"""The admin page: ``GET /{ROUTE}/admin/``, client keys and usage charts in the browser.

- ``GET {ROUTE}/admin/``: the page, ``chatservice/static/admin/index.html`` (``{ROUTE}/admin``
  redirects there, so the assets' relative links resolve).
- ``GET {ROUTE}/admin/static/<file>``: its stylesheet, its script and the vendored Chart.js
  (MIT licence, shipped in ``static/admin/vendor``; no CDN).

The page asks for ADMIN_TOKEN, keeps it in the tab's sessionStorage and calls the admin API
(:mod:`chatservice.routes.admin`) with it: create a key (shown once, with a copy button),
list, disable, enable and delete keys, and a usage view with tokens per day stacked by key and
a table by model. Loading the page needs no token; it carries the playground's strict
Content-Security-Policy (:func:`chatservice.routes.playground.secure`).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, redirect, url_for

from chatservice.routes.playground import secure, send_page

STATIC_DIR = Path(__file__).resolve().parent.parent / "static" / "admin"


def create_blueprint(route: str) -> Blueprint:
    """The page's blueprint for a normalised ROUTE (``""`` or ``"/name"``)."""
    base = f"{route}/admin"
    blueprint = Blueprint(
        "admin_page", __name__, static_folder=str(STATIC_DIR), static_url_path=f"{base}/static"
    )
    blueprint.add_url_rule(f"{base}/", view_func=page, methods=["GET"])
    blueprint.add_url_rule(base, view_func=to_page, methods=["GET"], strict_slashes=True)
    blueprint.after_request(secure)
    return blueprint


def page() -> Response:
    """``GET {ROUTE}/admin/``: the page (revalidated on every load)."""
    return send_page(STATIC_DIR)


def to_page() -> Response:
    """``GET {ROUTE}/admin``: 302 to the page's own address."""
    return redirect(url_for("admin_page.page"))
