"""Operational endpoints outside ROUTE and outside the rate limits: ``GET /healthz``."""

from __future__ import annotations

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue


def create_blueprint() -> Blueprint:
    """``GET /healthz`` answers ``{"status": "ok"}`` while the worker serves requests."""
    blueprint = Blueprint("ops", __name__)
    blueprint.add_url_rule("/healthz", view_func=healthz, methods=["GET"])
    return blueprint


def healthz() -> ResponseReturnValue:
    """Liveness: the worker's hub is free to answer."""
    return jsonify(status="ok")
