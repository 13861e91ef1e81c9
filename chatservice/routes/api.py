"""The ``POST /{ROUTE}`` face of the Docker ChatGPT API platform.

Body: :data:`chatservice.specs.API` (its fields, ranges and defaults): ``user_content``
(required), ``system_content`` or ``sys_content``, ``continuous_dialogue`` or ``continuous``
(earlier turns), ``model``, ``api_key`` (this request only), ``max_tokens``, ``stream``,
``lang``. The platform's README documents ``sys_content`` and ``data.response``; its client
scripts send ``system_content`` and read ``current_response`` and ``result``: both spellings
work.

Success: ``{"code":200,"msg":"success","data":{"response":..},"result":[..],
"current_response":..}``; failure: HTTP status equal to ``code``, ``{"code":..,
"msg":"failed","data":{"response":<localized reason>,"error":<stable key>}}``.
"""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, Response

from chatservice import specs
from chatservice.errors import BadRequest, ServiceError
from chatservice.models import ChatChunk, ChatRequest, ChatResult, for_model
from chatservice.pipeline import respond
from chatservice.routes import add_post_rule
from chatservice.service import current_service
from chatservice.settings import Secret, Settings
from chatservice.web import read_json_object

_PRINTABLE_ASCII = re.compile(r"[ -~]*")


def prefix(route: str) -> str:
    """The face's path: ROUTE itself."""
    return route


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint, answering POST at ROUTE (``/`` when ROUTE is empty)."""
    blueprint = Blueprint("api", __name__)
    add_post_rule(blueprint, prefix(route), ask)
    return blueprint


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """The original's failure envelope; ``code`` equals the HTTP status."""
    return {"code": err.status, "msg": "failed", "data": {"response": message, "error": err.key}}


def build_request(body: dict[str, Any], settings: Settings) -> ChatRequest:
    """Validate the body and build the model request (raises ``BadRequest``).

    Messages: the system message once, first (replacing a leading system turn of the
    history), then the history, then the user turn.
    """
    spec = specs.API
    user_content = spec["user_content"].value(body)
    system = spec["system_content"].value(body)
    history = spec["continuous_dialogue"].value(body) or []
    model = spec["model"].value(body) or settings.default_model
    api_key = spec["api_key"].value(body)
    if api_key and not _PRINTABLE_ASCII.fullmatch(api_key):
        # It becomes an HTTP header: anything else breaks the header or smuggles a line.
        raise BadRequest("invalid_api_key", field="api_key")
    max_tokens = spec["max_tokens"].value(body)
    stream = spec["stream"].value(body)

    messages = list(history)
    if system and system.strip():
        if messages and messages[0]["role"] == "system":
            messages = messages[1:]
        messages.insert(0, {"role": "system", "content": system})
    messages.append({"role": "user", "content": user_content})

    req = ChatRequest(
        kind="chat",
        model=model,
        max_tokens=max_tokens,
        messages=messages,
        stream=stream,
        api_key=Secret(api_key.strip()) if api_key else None,
        trim=True,
    )
    return for_model(req)


def ask() -> Response:
    """POST /{ROUTE}: one answer, or a stream of them with ``"stream": true``."""
    req = build_request(read_json_object(), current_service().settings)

    def render_result(result: ChatResult) -> dict[str, Any]:
        return {
            "code": 200,
            "msg": "success",
            "data": {
                "response": result.text,
                "model": result.model,
                "finish_reason": result.finish_reason,
                "usage": result.usage,
            },
            "result": [*req.messages, {"role": "assistant", "content": result.text}],
            "current_response": result.text,
        }

    return respond(req, render_result, render_chunk, render_error)


def render_chunk(chunk: ChatChunk) -> dict[str, Any]:
    """One stream event: the delta text in ``data.response``."""
    return {"code": 200, "msg": "success", "data": chunk.delta()}
