"""The OpenAI-compatible face (being written)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from chatservice.errors import ServiceError


def prefix(route: str) -> str:
    """The face's path prefix."""
    return f"{route}/v1"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint (being written)."""
    return Blueprint("openai_api", __name__)


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """The face's error envelope."""
    return {"code": err.status, "msg": message, "data": {"error": err.key}}
