"""The ``POST /{ROUTE}/v1/chat`` face of chatgpt-service.

Body: :data:`chatservice.specs.CHAT` (its fields, ranges and defaults): ``query`` and/or
``messages`` (at least one), ``model``, ``openai_parameter``, the sampling fields, ``stop``,
``stream``, ``lang``.

With ``openai_parameter`` true only the model, the input and ``max_tokens`` go upstream, so
the upstream's own sampling defaults apply; with false every given parameter goes, with
chatgpt-service's documented defaults for the rest (temperature 0.0, top_p 1, penalties 0,
and ``stop: ["Human:"]`` for completion models). The original validated these and, by a typo, never
sent them; here they are sent.

Success: ``{"code":0,"msg":"ok","data":{"response","finish_reason","usage","model"}}``;
failure: the HTTP status, ``{"code":<status>,"msg":<localized reason>,"data":{"error":<key>}}``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response

from chatservice import specs
from chatservice.errors import BadRequest, ServiceError
from chatservice.models import (
    TRANSCRIPT_STOP,
    ChatChunk,
    ChatRequest,
    ChatResult,
    flatten_messages,
    is_completion_model,
)
from chatservice.pipeline import respond
from chatservice.routes import add_post_rule
from chatservice.service import current_service
from chatservice.settings import Settings
from chatservice.web import read_json_object

#: chatgpt-service's documented defaults, sent when ``openai_parameter`` is false.
DOCUMENTED_DEFAULTS = {
    "temperature": 0.0,
    "top_p": 1,
    "frequency_penalty": 0,
    "presence_penalty": 0,
}
#: Only this exact path is the face: ``/v1/chat/completions`` below it is another face's.
EXACT = True


def prefix(route: str) -> str:
    """The face's path: ``{ROUTE}/v1/chat``."""
    return f"{route}/v1/chat"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint."""
    blueprint = Blueprint("chat", __name__)
    add_post_rule(blueprint, prefix(route), chat)
    return blueprint


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """The original's failure envelope: ``code`` is the HTTP status, ``msg`` the reason."""
    return {"code": err.status, "msg": message, "data": {"error": err.key}}


def build_request(body: dict[str, Any], settings: Settings) -> ChatRequest:
    """Validate the body and build the model request (raises ``BadRequest``)."""
    spec = specs.CHAT
    query = spec["query"].value(body)
    turns = spec["messages"].value(body) or []
    if query is None and not turns:
        raise BadRequest("query_or_messages")
    model = spec["model"].value(body) or settings.default_model
    openai_parameter = spec["openai_parameter"].value(body)
    max_tokens = spec["max_tokens"].value(body)
    sampling = {name: spec[name].value(body) for name in DOCUMENTED_DEFAULTS}
    best_of = spec["best_of"].value(body)
    stop = spec["stop"].value(body)
    stream = spec["stream"].value(body)

    messages = list(turns)
    if query is not None:
        messages.append({"role": "user", "content": query})
    req = ChatRequest(
        kind="chat", model=model, max_tokens=max_tokens, messages=messages, stream=stream
    )
    if is_completion_model(model):
        req.kind = "completion"
        req.prompt = query if not turns else flatten_messages(messages)
    if not openai_parameter:
        req.params = {
            name: DOCUMENTED_DEFAULTS[name] if value is None else value
            for name, value in sampling.items()
        }
        if stop is not None:
            req.params["stop"] = stop
        elif req.kind == "completion":
            req.params["stop"] = TRANSCRIPT_STOP
        # best_of exists only in the completions API; its chat clients may send it.
        if best_of is not None and req.kind == "completion":
            req.params["best_of"] = best_of
    return req


def chat() -> Response:
    """POST /{ROUTE}/v1/chat: one answer, or a stream of them with ``"stream": true``."""
    req = build_request(read_json_object(), current_service().settings)
    return respond(req, render_result, render_chunk, render_error)


def render_result(result: ChatResult) -> dict[str, Any]:
    """The original's success envelope."""
    return {
        "code": 0,
        "msg": "ok",
        "data": {
            "response": result.text,
            "finish_reason": result.finish_reason,
            "usage": result.usage,
            "model": result.model,
        },
    }


def render_chunk(chunk: ChatChunk) -> dict[str, Any]:
    """One stream event: the delta text in ``data.response``."""
    return {"code": 0, "msg": "ok", "data": chunk.delta()}
