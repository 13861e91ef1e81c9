"""The OpenAI-compatible face: ``/{ROUTE}/v1/chat/completions``, ``/completions``, ``/models``.

Requests and responses follow the OpenAI API reference (platform.openai.com/docs/api-reference)
so the official SDKs and tools built on them work with ``base_url = <server>/{ROUTE}/v1``.

- ``POST chat/completions``: ``messages`` (required; OpenAI's message shapes: content strings
  or part lists, ``null`` content with ``tool_calls``, ``tool`` and ``developer`` messages),
  ``model`` (default DEFAULT_MODEL), ``stream``, ``max_tokens``/``max_completion_tokens``
  (positive integers), and OpenAI's ranges and shapes for ``temperature``, ``top_p``, ``n``,
  ``stop``, ``tools``... (:data:`chatservice.openai_fields.CHAT_COMPLETION`).
- ``POST completions``: ``prompt`` (required, a string or a list), same other fields.
- Every other body field (``tools``, ``response_format``, unknown ones) is forwarded as is to
  an upstream once checked; the embedded model implements what it can and refuses the rest with 400
  ``unsupported_parameter``.
- Answers are the backend's own OpenAI-shaped bodies, passed on unchanged; a stream relays
  every chunk (the role-only first one, the usage-only last one) then ``data: [DONE]``.
- ``POST embeddings``: ``input`` (required: a non-empty string, or a non-empty list of strings
  or of token ids, or of lists of token ids), ``model`` (required), ``encoding_format``
  (``float`` or ``base64``), other fields forwarded; routed like a chat request and answered
  with the upstream's body unchanged, or by the embedded model (token-id input: 400).
- ``GET models`` and ``GET models/<id>``: the upstream's models (when the upstream is in use)
  and the embedded model (unless BACKEND=openai), as OpenAI ``model`` objects.
- ``Authorization: Bearer sk-...`` is used as the upstream key for that request when client
  keys are on (CLIENT_KEYS); other bearer values are ignored, since the SDK insists on some
  ``api_key`` even for a keyless server.
- Errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status, ``code``
  being the stable key (``missing_field``, ``upstream_timeout``, ``model_not_found``...).
"""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, Response, jsonify, request

from chatservice import auth, openai_fields
from chatservice.errors import NotFound, ServiceError, UpstreamError
from chatservice.models import ChatChunk, ChatRequest, ChatResult, Kind
from chatservice.pipeline import answer, respond
from chatservice.routes import add_post_rule
from chatservice.service import Service, current_service
from chatservice.settings import Secret, Settings
from chatservice.web import read_json_object

#: Body fields :class:`ChatRequest` carries itself, and ``lang`` (the language of our own
#: error messages, which OpenAI would reject as an unknown argument); every other field
#: goes upstream in ``params``.
OWN_FIELDS = frozenset({"model", "messages", "prompt", "stream", "max_tokens", "lang"})
#: ``owned_by`` of the embedded model in the model list.
LOCAL_OWNER = "chatservice"

#: OpenAI's error ``type`` for each status it documents (api-reference "Error codes").
_ERROR_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    429: "rate_limit_error",
    500: "server_error",
}


def prefix(route: str) -> str:
    """The face's path prefix: ``{ROUTE}/v1`` and everything below it.

    ``{ROUTE}/v1/chat`` itself belongs to the chat face (registered exact, so longer).
    """
    return f"{route}/v1"


def create_blueprint(route: str) -> Blueprint:
    """The face's blueprint: three POST endpoints and the two model endpoints."""
    blueprint = Blueprint("openai_api", __name__)
    base = prefix(route)
    add_post_rule(blueprint, f"{base}/chat/completions", chat_completions)
    add_post_rule(blueprint, f"{base}/completions", completions)
    add_post_rule(blueprint, f"{base}/embeddings", embeddings)
    blueprint.add_url_rule(
        f"{base}/models", view_func=list_models, methods=["GET"], strict_slashes=False
    )
    # ``path``: Ollama, vLLM and LiteLLM model ids contain slashes ("org/name").
    blueprint.add_url_rule(
        f"{base}/models/<path:model_id>", view_func=retrieve_model, methods=["GET"]
    )
    return blueprint


def error_type(err: ServiceError) -> str:
    """OpenAI's error ``type`` for ``err``: by status, ``insufficient_quota`` for a spent key.

    4xx not listed (400, 404, 405, 413...) are ``invalid_request_error``; 5xx other than 500
    (502, 503, 504) are ``api_error``.
    """
    if err.key == "upstream_quota":
        return "insufficient_quota"
    if err.status in _ERROR_TYPES:
        return _ERROR_TYPES[err.status]
    return "api_error" if err.status >= 500 else "invalid_request_error"


def render_error(err: ServiceError, message: str) -> dict[str, Any]:
    """OpenAI's error body; ``param`` is the offending field when the error names one."""
    return {
        "error": {
            "message": message,
            "type": error_type(err),
            "param": err.params.get("field"),
            "code": err.key,
        }
    }


def client_key(settings: Settings | None = None) -> Secret | None:
    """The upstream key the client brought as ``Authorization: Bearer sk-...``, if any.

    Other bearer values are not keys (the openai SDK insists on sending something, people
    pass "x"), and the service's own AUTH_TOKEN is a credential for us, never for upstream.
    None at all unless client keys are on (CLIENT_KEYS, ``Settings.accepts_client_keys``).
    ``settings``: the current app's, when the caller has them at hand.
    """
    settings = settings or current_service().settings
    if not settings.accepts_client_keys:
        return None
    # From the WSGI environ: werkzeug's header mapping costs some ten Python calls to build
    # and read, and nothing else of a chat request reads it.
    token = auth.bearer_of(request.environ.get("HTTP_AUTHORIZATION", ""))
    if token is not None and token.startswith("sk-") and not auth.is_service_token(settings, token):
        return Secret(token)
    return None


def build_request(kind: Kind, body: dict[str, Any], settings: Settings) -> ChatRequest:
    """Validate an OpenAI request body and build the model request (raises ``BadRequest``).

    The messages and OpenAI's documented fields are checked as OpenAI checks them, whatever
    the backend, by the face's spec (:mod:`chatservice.openai_fields`); unknown fields are
    the backend's to judge.
    """
    spec = openai_fields.CHAT_COMPLETION if kind == "chat" else openai_fields.COMPLETION
    fields = spec.read(body)
    params = {name: value for name, value in body.items() if name not in OWN_FIELDS}
    # The newer name stays in params (the upstream gets it under that name), checked as an
    # integer (5.0 becomes 5, as for max_tokens).
    if fields["max_completion_tokens"] is not None:
        params["max_completion_tokens"] = fields["max_completion_tokens"]
    return ChatRequest(
        kind=kind,
        model=fields["model"] or settings.default_model,
        max_tokens=fields["max_tokens"],
        messages=fields.get("messages") or [],
        prompt=fields.get("prompt", ""),
        params=params,
        stream=fields["stream"],
        api_key=client_key(settings),
        relay=True,
        trim=settings.trim_openai_face and kind == "chat",
    )


def chat_completions() -> Response:
    """``POST {ROUTE}/v1/chat/completions``: a ``chat.completion`` or a stream of chunks."""
    return _answer("chat")


def completions() -> Response:
    """``POST {ROUTE}/v1/completions``: a ``text_completion`` or a stream of chunks."""
    return _answer("completion")


def _answer(kind: Kind) -> Response:
    req = build_request(kind, read_json_object(), current_service().settings)
    return respond(req, render_result, render_chunk, render_error, every_chunk=True)


def embeddings() -> Response:
    """``POST {ROUTE}/v1/embeddings``: an OpenAI ``list`` of ``embedding`` objects."""
    req = build_embedding_request(read_json_object())
    return jsonify(answer(req).raw)


def build_embedding_request(body: dict[str, Any]) -> ChatRequest:
    """Validate an OpenAI embeddings body into an ``embedding`` request (raises ``BadRequest``)."""
    fields = openai_fields.EMBEDDING.read(body)
    params = {name: value for name, value in body.items() if name not in ("input", "model")}
    return ChatRequest(
        kind="embedding",
        model=fields["model"],
        max_tokens=None,
        prompt=fields["input"],
        params=params,
        api_key=client_key(),
    )


def render_result(result: ChatResult) -> dict[str, Any]:
    """The backend's OpenAI-shaped body, unchanged."""
    return result.raw


def render_chunk(chunk: ChatChunk) -> dict[str, Any] | bytes:
    """The backend's OpenAI-shaped chunk, unchanged: the upstream's event bytes as they came
    when there are some, else the chunk as a JSON object."""
    return chunk.event if chunk.event is not None else chunk.raw


# --- models -----------------------------------------------------------------------------------


def list_models() -> Response:
    """``GET {ROUTE}/v1/models``: ``{"object": "list", "data": [model, ...]}``."""
    return jsonify({"object": "list", "data": available_models(current_service())})


def retrieve_model(model_id: str) -> Response:
    """``GET {ROUTE}/v1/models/<id>``: one model object, or 404 ``model_not_found``."""
    for entry in available_models(current_service()):
        if entry["id"] == model_id:
            return jsonify(entry)
    raise NotFound("model_not_found", field="model", model=model_id)


def available_models(service: Service) -> list[dict[str, Any]]:
    """The models a request to this server can use, as OpenAI ``model`` objects.

    The embedded model (unless BACKEND=openai) first, then the upstream's own list when the
    upstream would answer (BACKEND=openai, or BACKEND=auto with API_KEY or a client key).
    An upstream entry with the embedded model's id is left out: requests naming it go to the
    embedded model. Only models ALLOWED_MODELS allows are listed. With ``[[upstreams]]``: the
    union of what they serve (:func:`_configured_models`).
    """
    if service.backends.configured:
        models = _configured_models(service)
        return [entry for entry in models if service.backends.policy.allows(entry["id"])]
    models = []
    local_id = None
    if service.backends.mode != "openai":
        models.append(local_model_entry(service))
        local_id = service.backends.local.model_id
    models.extend(entry for entry in _upstream_models(service) if entry["id"] != local_id)
    return [entry for entry in models if service.backends.policy.allows(entry["id"])]


def local_model_entry(service: Service) -> dict[str, Any]:
    """The embedded model as an OpenAI ``model`` object.

    ``created`` is the GGUF file's modification time (0 when the file cannot be found): the
    model has no creation date of its own that llama.cpp reports.
    """
    try:
        created = int(os.path.getmtime(service.backends.local.model_file()))
    except OSError:
        created = 0
    return {
        "id": service.backends.local.model_id,
        "object": "model",
        "created": created,
        "owned_by": LOCAL_OWNER,
    }


def _configured_models(service: Service) -> list[dict[str, Any]]:
    """Each public name the ``[[upstreams]]`` serve, once (``owned_by`` the first upstream
    serving it, in priority order), the embedded model's entry for a local upstream. An
    upstream whose ``/models`` cannot be fetched lists only its explicit names.
    """
    seen: dict[str, dict[str, Any]] = {}
    upstreams = sorted(service.backends.router.upstreams, key=lambda u: -u.spec.priority)
    for upstream in upstreams:
        if upstream.spec.local:
            entry = local_model_entry(service)
            seen.setdefault(entry["id"], entry)
            continue
        for name in upstream.public_models():
            seen.setdefault(
                name, {"id": name, "object": "model", "created": 0, "owned_by": upstream.name}
            )
    return list(seen.values())


def _upstream_models(service: Service) -> list[dict[str, Any]]:
    """The upstream's model objects when it is in use, else none.

    Raises the upstream's ``UpstreamError``/``UpstreamTimeout``, and ``upstream_bad_response``
    when its body is not an OpenAI list. Entries are passed on as the upstream wrote them.
    """
    backends = service.backends
    api_key = client_key() if backends.mode != "local" else None
    if not backends.upstream_answers(api_key):
        return []
    body = backends.upstream.list_models(api_key)
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list) or not all(
        isinstance(entry, dict) and isinstance(entry.get("id"), str) for entry in data
    ):
        raise UpstreamError("upstream_bad_response")
    return data
