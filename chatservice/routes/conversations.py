"""The conversations face of Alice ChatGPT (seed 003) under ``/{ROUTE}/chatgpt/``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint

from chatservice.errors import ServiceError


def prefix(route: str) -> str:
    """The face's path prefix."""
    return f"{route}/chatgpt"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint (being written)."""
    return Blueprint("conversations", __name__)


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """The face's error envelope (being written)."""
    return {"code": err.status, "msg": message, "data": {"error": err.key}}
