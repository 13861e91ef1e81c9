"""The OpenAPI 3.1 document of every HTTP face, built from the settings it describes.

:func:`build_document` writes the paths under ROUTE, the security requirements of AUTH_MODE
and the optional operations (the playground) as this app serves them, so the document served
at ``GET /openapi.json`` is true for this deployment. Request schemas state the constraints the
faces really enforce (``chatservice.validation`` and each face's ``build_request``): fields
may be ``null`` where the face treats null as absent, and fields a face ignores or forwards
unchecked carry no type, so a client (or schemathesis) can rely on "valid by the schema" meaning
"not refused as a bad request". ``tests/test_openapi.py`` fails when a route is undocumented.

Every POST path also answers with a trailing slash (``chatservice.routes.add_post_rule``); the
document lists each path once, without it.
"""

from __future__ import annotations

import copy
from typing import Any

from chatservice import openai_fields, openapi_keys, specs
from chatservice.settings import Settings

OPENAPI_VERSION = "3.1.0"
#: ``info.version``: the project's version (pyproject.toml; a test keeps them equal).
API_VERSION = "0.1.0"

JSON = "application/json"
TEXT = "text/plain"
SSE = "text/event-stream"
HTML = "text/html"

Schema = dict[str, Any]

TAG_API = "Docker ChatGPT API platform"
TAG_CHAT = "chatgpt-service"
TAG_OPENAI = "OpenAI-compatible"
TAG_WS = "WebSocket (chatgpt-service)"
TAG_ROOM = "Chat room (ChatGPT-API on gin)"
TAG_CONV = "Conversations (Alice ChatGPT)"
TAG_ADMIN = "Admin"
TAG_OPS = "Operations"
TAG_DOCS = "Documentation"

TAGS = [
    {"name": TAG_API, "description": "`POST /{ROUTE}`: the Docker ChatGPT API platform."},
    {"name": TAG_CHAT, "description": "`POST /{ROUTE}/v1/chat`: chatgpt-service."},
    {
        "name": TAG_OPENAI,
        "description": "OpenAI's own request and response schema under `/{ROUTE}/v1`, so the "
        "official SDKs work with `base_url = <server>/{ROUTE}/v1`.",
    },
    {"name": TAG_WS, "description": "`/{ROUTE}/ws`: chatgpt-websocket streaming."},
    {"name": TAG_ROOM, "description": "`/{ROUTE}/chat-room`: a conversation kept on the server."},
    {
        "name": TAG_CONV,
        "description": "`/{ROUTE}/chatgpt/...`: Alice ChatGPT conversations, plain-text bodies.",
    },
    {"name": TAG_ADMIN, "description": "Operator views, behind ADMIN_TOKEN."},
    {"name": TAG_OPS, "description": "Health, readiness and metrics: outside ROUTE, no limits."},
    {"name": TAG_DOCS, "description": "This document and its human-readable page."},
]

#: What each error status means on the chat faces; the stable key in the body says exactly why.
ERROR_TEXT = {
    400: "The request is invalid: bad JSON, a wrong type or range, a missing field, a model "
    "ALLOWED_MODELS excludes, or the upstream refused the request.",
    401: "Authentication failed (AUTH_MODE; with AUTH_MODE=keys also a disabled or expired "
    "client key), or the upstream refused the key.",
    403: "AUTH_MODE=keys: the client key may not use this model.",
    404: "No such resource.",
    409: "The conversation or chat room is busy with another turn, or the conversation has "
    "nothing to regenerate or roll back.",
    413: "The body is larger than MAX_BODY_BYTES.",
    426: "A plain HTTP request to the WebSocket path.",
    429: "A rate limit was hit (HOUR_LIMIT, MINUTE_LIMIT, SECOND_LIMIT, UPSTREAM_RPM, a client "
    "key's RPM or TPM), a client key's budget is spent, or the upstream key is limited; see "
    "`Retry-After`.",
    502: "The upstream API failed, broke off, or answered something unreadable.",
    503: "No usable upstream key, the upstream is overloaded, the store is unavailable, or the "
    "embedded model is busy or cannot be loaded.",
    504: "The upstream API did not answer in time.",
}
#: Error statuses every model-answering operation can give.
MODEL_ERRORS = (400, 401, 403, 413, 429, 502, 503, 504)

STREAM_TEXT = (
    'With `"stream": true`: Server-Sent Events, one `data: <JSON>` event per chunk as it is '
    "generated, then `data: [DONE]`. An error before the first event is an ordinary JSON error "
    "response; after it, one event in the face's error envelope ends the stream (no `[DONE]`)."
)

_SPACE = specs.SPACE
_NON_BLANK = specs.NON_BLANK


def _wrapper_chunk(description: str, code: int, msg: str, finish_reason: Schema) -> Schema:
    """A wrapper service's face's stream event: ``{"code", "msg", "data": ChatChunk.delta()}``."""
    return {
        "type": "object",
        "description": description,
        "required": ["code", "msg", "data"],
        "properties": {
            "code": {"const": code},
            "msg": {"const": msg},
            "data": {
                "type": "object",
                "required": ["response", "finish_reason", "model"],
                "properties": {
                    "response": {"type": "string"},
                    "finish_reason": finish_reason,
                    "model": {"type": "string"},
                    "usage": _ref("Usage"),
                },
            },
        },
    }


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(media: str, schema: Schema, example: Any = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"schema": schema}
    if example is not None:
        entry["example"] = example
    return {media: entry}


def _sse(payload: Schema, description: str) -> dict[str, Any]:
    """``text/event-stream`` content: as OpenAPI 3.1 tools read it, the schema of one event
    (``data``, ``event``, ``id``), whose ``data`` is JSON matching ``payload`` or ``[DONE]``.
    """
    event = {
        "type": "object",
        "description": description,
        "required": ["data"],
        "properties": {
            "data": {
                "type": "string",
                "description": "JSON, or `[DONE]` after the last chunk.",
                "if": {"const": "[DONE]"},
                "else": {"contentMediaType": JSON, "contentSchema": payload},
            },
        },
    }
    return _content(SSE, event)


def _json_body(schema: Schema, example: Any = None) -> dict[str, Any]:
    return {"required": True, "content": _content(JSON, schema, example)}


def _error_responses(media: str, schema: Schema, statuses: tuple[int, ...]) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status in statuses:
        response: dict[str, Any] = {
            "description": ERROR_TEXT[status],
            "content": _content(media, schema),
        }
        if status == 429:
            response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        responses[str(status)] = response
    return responses


def _lang_parameter() -> dict[str, Any]:
    return {"$ref": "#/components/parameters/lang"}


# --- schemas -----------------------------------------------------------------------------------


def _schemas() -> dict[str, Schema]:
    """``components.schemas``: request bodies, envelopes and stream events of every face."""
    usage = {
        "type": ["object", "null"],
        "description": "Token counts as the backend reported them.",
        "properties": {
            "prompt_tokens": {"type": "integer"},
            "completion_tokens": {"type": "integer"},
            "total_tokens": {"type": "integer"},
        },
    }
    message = {
        "type": "object",
        "description": "One turn of a conversation; other fields are ignored.",
        "required": ["role", "content"],
        "properties": {
            "role": {"enum": ["system", "user", "assistant"]},
            "content": {"type": "string"},
        },
    }
    finish_reason = {
        "type": ["string", "null"],
        "description": "Why the answer ended (`stop`, `length`...); null until the last chunk.",
    }
    return {
        "Message": message,
        "Usage": usage,
        # --- POST /{ROUTE} (the Docker ChatGPT API platform)
        "ApiRequest": specs.API.schema(),
        "ApiSuccess": {
            "type": "object",
            "required": ["code", "msg", "data", "result", "current_response"],
            "properties": {
                "code": {"const": 200},
                "msg": {"const": "success"},
                "data": {
                    "type": "object",
                    "required": ["response", "model", "finish_reason", "usage"],
                    "properties": {
                        "response": {"type": "string"},
                        "model": {"type": "string"},
                        "finish_reason": finish_reason,
                        "usage": _ref("Usage"),
                    },
                },
                "result": {
                    "type": "array",
                    "items": _ref("Message"),
                    "description": "The whole history including this answer: send it back as "
                    "`continuous` for the next turn.",
                },
                "current_response": {"type": "string", "description": "The answer again."},
            },
        },
        "ApiChunk": _wrapper_chunk(
            "One stream event of `POST /{ROUTE}`: the new text in `data.response`.",
            200,
            "success",
            finish_reason,
        ),
        "ApiError": {
            "type": "object",
            "description": "The failure envelope of `POST /{ROUTE}`; `code` equals the HTTP "
            "status.",
            "required": ["code", "msg", "data"],
            "properties": {
                "code": {"type": "integer"},
                "msg": {"const": "failed"},
                "data": {
                    "type": "object",
                    "required": ["response", "error"],
                    "properties": {
                        "response": {"type": "string", "description": "Localized reason."},
                        "error": {"type": "string", "description": "Stable machine key."},
                    },
                },
            },
        },
        # --- POST /{ROUTE}/v1/chat (chatgpt-service)
        "ChatRequest": specs.CHAT.schema(),
        "ChatSuccess": {
            "type": "object",
            "required": ["code", "msg", "data"],
            "properties": {
                "code": {"const": 0},
                "msg": {"const": "ok"},
                "data": {
                    "type": "object",
                    "required": ["response", "finish_reason", "usage", "model"],
                    "properties": {
                        "response": {"type": "string"},
                        "finish_reason": finish_reason,
                        "usage": _ref("Usage"),
                        "model": {"type": "string"},
                    },
                },
            },
        },
        "ChatChunk": _wrapper_chunk(
            "One stream event of `POST /{ROUTE}/v1/chat`.", 0, "ok", finish_reason
        ),
        "ChatError": {
            "type": "object",
            "description": "The failure envelope of chatgpt-service (`/v1/chat`, and `/ws` before "
            "the upgrade); `code` equals the HTTP status, `msg` is the localized reason.",
            "required": ["code", "msg", "data"],
            "properties": {
                "code": {"type": "integer"},
                "msg": {"type": "string"},
                "data": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {"error": {"type": "string", "description": "Stable key."}},
                },
            },
        },
        # --- OpenAI-compatible
        "ChatCompletionRequest": openai_fields.CHAT_COMPLETION.schema(
            "OpenAI's chat completion request, checked as OpenAI checks it "
            "whatever the backend (message shapes, the ranges below). An upstream gets every "
            "field as sent; the embedded model implements `response_format` (`json_object`, "
            "`json_schema`), `n`, `seed`, `stream_options.include_usage`, `logprobs` / "
            "`top_logprobs` (each choice's, or each streamed chunk's, `logprobs.content`: the "
            "model's log-probabilities before temperature; not with `tools`) and `tools` / "
            "`tool_choice` (a named function, `required` with one tool, `auto` unstreamed) and "
            "refuses the rest (`logit_bias`, images, unknown fields) with 400 "
            "`unsupported_parameter` naming the field."
        ),
        "ChatMessage": openai_fields.MESSAGE,
        "CompletionRequest": openai_fields.COMPLETION.schema(
            "OpenAI's (legacy) completion request; other fields are forwarded unchanged."
        ),
        "EmbeddingRequest": openai_fields.EMBEDDING.schema(
            "OpenAI's embeddings request; fields other than `input`, `model` "
            "and `lang` (`encoding_format`, `dimensions`, `user`) are forwarded unchanged."
        ),
        "EmbeddingList": {
            "type": "object",
            "description": "OpenAI's `list` of `embedding` objects: the upstream's answer as "
            "it sent it, or the embedded model's (mean-pooled vectors of the GGUF model, not "
            "OpenAI's); `embedding` is a list of floats, or with `encoding_format: base64` "
            "little-endian float32 bytes in base64.",
            "required": ["object", "data"],
            "properties": {
                "object": {"type": "string"},
                "data": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "object": {"type": "string"},
                            "index": {"type": "integer"},
                            "embedding": {
                                "anyOf": [
                                    {"type": "array", "items": {"type": "number"}},
                                    {"type": "string"},
                                ]
                            },
                        },
                    },
                },
                "model": {"type": "string"},
                "usage": {"type": "object"},
            },
        },
        "Completion": {
            "type": "object",
            "description": "The backend's `chat.completion` or `text_completion` object, passed "
            "on as the upstream sent it.",
            "required": ["choices"],
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "created": {"type": "integer"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": _ref("Usage"),
            },
        },
        "CompletionChunk": {
            "type": "object",
            "description": "A `chat.completion.chunk` or `text_completion` chunk, passed on as "
            "the backend produced it (the usage-only last chunk has no choices).",
            "properties": {
                "id": {"type": "string"},
                "object": {"type": "string"},
                "model": {"type": "string"},
                "choices": {"type": "array", "items": {"type": "object"}},
                "usage": _ref("Usage"),
            },
        },
        "Model": {
            "type": "object",
            "description": "An OpenAI `model` object; upstream entries are passed on as written.",
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "object": {"const": "model"},
                "created": {"type": "integer"},
                "owned_by": {"type": "string"},
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["object", "data"],
            "properties": {
                "object": {"const": "list"},
                "data": {"type": "array", "items": _ref("Model")},
            },
        },
        "OpenAIError": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["message", "type", "param", "code"],
                    "properties": {
                        "message": {"type": "string", "description": "Localized."},
                        "type": {
                            "type": "string",
                            "examples": ["invalid_request_error", "rate_limit_error"],
                        },
                        "param": {"type": ["string", "null"], "description": "The field."},
                        "code": {"type": "string", "description": "Stable key."},
                    },
                },
            },
        },
        # --- WebSocket frames (documented here; the socket is not HTTP)
        "WsRequestFrame": {
            "type": "object",
            "description": "A client text frame on `/{ROUTE}/ws`.",
            "required": ["seq", "data"],
            "properties": {
                "seq": {
                    "type": "string",
                    "pattern": _NON_BLANK,
                    "description": "Echoed in every answer frame; not blank.",
                },
                "data": {
                    "allOf": [_ref("ChatRequest")],
                    "properties": {
                        "origin_stream": {
                            "type": ["boolean", "null"],
                            "default": True,
                            "description": "true: each piece as it comes; false: whole sentences.",
                        }
                    },
                },
            },
        },
        "WsAnswerFrame": {
            "type": "object",
            "description": "A server frame: a piece of the answer (`code` 0), or an error "
            "(`code` the HTTP status it would have had, `msg` localized, `data.error` the key).",
            "required": ["code", "msg", "seq", "data"],
            "properties": {
                "code": {"type": "integer"},
                "msg": {"type": "string"},
                "seq": {"type": "string"},
                "data": {
                    "type": "object",
                    "required": ["consume_time", "finish_reason", "contents"],
                    "properties": {
                        "consume_time": {
                            "type": "string",
                            "description": "Seconds since the frame arrived, two decimals.",
                        },
                        "finish_reason": finish_reason,
                        "contents": {"type": "string"},
                        "error": {"type": "string"},
                    },
                },
            },
        },
        # --- chat room (ChatGPT-API on gin)
        "RoomTurn": specs.ROOM_TURN.schema(),
        "RoomSuccess": {
            "type": "object",
            "required": ["code", "msg", "data"],
            "properties": {
                "code": {"const": 200},
                "msg": {"const": "success"},
                "data": {"type": "string", "description": "The answer (empty after reset)."},
            },
        },
        "RoomError": {
            "type": "object",
            "required": ["code", "msg", "data", "error"],
            "properties": {
                "code": {"type": "integer"},
                "msg": {"type": "string", "description": "Localized reason."},
                "data": {"type": "null"},
                "error": {"type": "string", "description": "Stable key."},
            },
        },
        # --- conversations (Alice ChatGPT)
        "TurboCreate": specs.TURBO_CREATE.schema(),
        "RolePlayCreate": specs.ROLE_PLAY_CREATE.schema(),
        "RoleName": specs.ROLE_NAME,
        "QuickAnswer": specs.QUICK_ANSWER.schema(),
        "SharedConversation": {
            "type": "object",
            "required": ["Id", "Prompt", "SentenceList"],
            "properties": {
                "Id": {"type": "string"},
                "Prompt": {"type": "string"},
                "SentenceList": {"type": "array", "items": {"type": "string"}},
            },
        },
        # --- admin and operations
        "KeyList": {
            "type": "object",
            "required": ["keys", "upstreams"],
            "properties": {
                "upstreams": {
                    "type": "object",
                    "description": "Upstream name -> its keys (the `keys` rows without "
                    "`upstream`); `default` without `[[upstreams]]`.",
                    "additionalProperties": {"type": "array", "items": {"type": "object"}},
                },
                "keys": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["key", "id", "state", "cooldown_until", "failures"],
                        "properties": {
                            "upstream": {
                                "type": "string",
                                "description": "The upstream's name (in `/admin/keys`' "
                                "`keys` only); the same key at two upstreams has a row (and "
                                "a state) at each.",
                            },
                            "key": {"type": "string", "description": "Masked: `sk-...abcd`."},
                            "id": {"type": "string"},
                            "state": {"enum": ["usable", "cooling", "disabled"]},
                            "cooldown_until": {
                                "type": ["number", "null"],
                                "description": "Epoch seconds.",
                            },
                            "failures": {"type": "integer"},
                            "last_error": {"type": ["string", "null"]},
                        },
                    },
                },
            },
        },
        "UpstreamList": {
            "type": "object",
            "required": ["upstreams"],
            "properties": {
                "upstreams": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["name", "type", "priority", "weight", "breaker", "keys"],
                        "properties": {
                            "name": {"type": "string"},
                            "type": {"enum": ["openai", "local"]},
                            "host": {"type": ["string", "null"], "description": "No path."},
                            "models": {
                                "type": ["array", "null"],
                                "items": {"type": "string"},
                                "description": "Patterns; null: what its /models lists.",
                            },
                            "model_map": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "priority": {"type": "integer"},
                            "weight": {"type": "number"},
                            "breaker": {"enum": ["closed", "open", "half_open"]},
                            "breaker_until": {
                                "type": ["number", "null"],
                                "description": "Epoch seconds.",
                            },
                            "keys": _ref("KeyList/properties/keys"),
                            "requests": {"type": "integer"},
                            "failures": {"type": "integer"},
                            "latency_p50_ms": {"type": ["number", "null"]},
                        },
                    },
                }
            },
        },
        "Readiness": {
            "type": "object",
            "required": ["status", "checks"],
            "properties": {
                "status": {"enum": ["ready", "not_ready"]},
                "checks": {
                    "type": "object",
                    "description": "Each check's result: `ok` or a stable reason "
                    "(`unavailable`, `no_usable_key`, `no_usable_upstream`, `model_missing`, "
                    "`llama_cpp_missing`).",
                    "additionalProperties": {"type": "string"},
                    "examples": [{"store": "ok", "shared_state": "ok", "backend": "ok"}],
                },
                "failing": {"type": "array", "items": {"type": "string"}},
                "upstreams": {
                    "type": "object",
                    "description": "With `[[upstreams]]` only: each upstream's check by name "
                    "(`ok`, `breaker_open`, `no_usable_key`, `model_missing`, "
                    "`llama_cpp_missing`); ready while at least one is `ok`.",
                    "additionalProperties": {"type": "string"},
                },
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
    }


# --- operations --------------------------------------------------------------------------------


def _security(settings: Settings, *, bearer: bool = False) -> list[dict[str, list[str]]] | None:
    """The security requirement of a face's operations under AUTH_MODE (auth.py)."""
    mode = settings.auth_mode
    if mode == "simple":
        return [{"token": []}, {"bearer": []}] if bearer else [{"token": []}]
    if mode == "normal":
        return [{"token": [], "uuid": []}]
    if mode == "keys":
        return [{"bearer": []}, {"token": []}]
    # No client authentication: the OpenAI face still reads a bearer sk-... as upstream key.
    return [{}, {"bearer": []}] if bearer else None


def _op(
    tag: str,
    operation_id: str,
    summary: str,
    responses: dict[str, Any],
    *,
    description: str | None = None,
    body: dict[str, Any] | None = None,
    parameters: list[dict[str, Any]] | None = None,
    security: list[dict[str, list[str]]] | None = None,
) -> dict[str, Any]:
    operation: dict[str, Any] = {"tags": [tag], "operationId": operation_id, "summary": summary}
    if description:
        operation["description"] = description
    if parameters:
        operation["parameters"] = parameters
    if body is not None:
        operation["requestBody"] = body
    operation["responses"] = responses
    if security is not None:
        operation["security"] = security
    return operation


def _model_operations(settings: Settings) -> dict[str, dict[str, Any]]:
    """The faces that answer from a model: /{ROUTE}, /v1/chat, the OpenAI face."""
    route = settings.route
    lang = [_lang_parameter()]
    openai_security = _security(settings, bearer=True)
    return {
        route or "/": {
            "post": _op(
                TAG_API,
                "api_ask",
                "Ask a question (the Docker ChatGPT API platform)",
                {
                    "200": {
                        "description": "The answer. " + STREAM_TEXT + " Events are `ApiChunk`.",
                        "content": {
                            **_content(JSON, _ref("ApiSuccess")),
                            **_sse(
                                {"anyOf": [_ref("ApiChunk"), _ref("ApiError")]},
                                "An `ApiChunk`, or the `ApiError` that ends a failed stream.",
                            ),
                        },
                    },
                    **_error_responses(JSON, _ref("ApiError"), MODEL_ERRORS),
                },
                body=_json_body(
                    _ref("ApiRequest"), {"user_content": "What is the capital of France?"}
                ),
                parameters=lang,
                security=_security(settings),
            )
        },
        f"{route}/v1/chat": {
            "post": _op(
                TAG_CHAT,
                "chat",
                "Chat or complete (chatgpt-service)",
                {
                    "200": {
                        "description": "The answer. " + STREAM_TEXT + " Events are `ChatChunk`.",
                        "content": {
                            **_content(JSON, _ref("ChatSuccess")),
                            **_sse(
                                {"anyOf": [_ref("ChatChunk"), _ref("ChatError")]},
                                "A `ChatChunk`, or the `ChatError` that ends a failed stream.",
                            ),
                        },
                    },
                    **_error_responses(JSON, _ref("ChatError"), MODEL_ERRORS),
                },
                body=_json_body(_ref("ChatRequest"), {"query": "Hello"}),
                parameters=lang,
                security=_security(settings),
            )
        },
        f"{route}/v1/chat/completions": {
            "post": _op(
                TAG_OPENAI,
                "openai_chat_completions",
                "Create a chat completion",
                {
                    "200": {
                        "description": 'A `chat.completion`; with `"stream": true` Server-Sent '
                        "Events relaying every `chat.completion.chunk` as the backend produced "
                        "it (role-only first chunk and usage chunk included), then "
                        "`data: [DONE]`.",
                        "content": {
                            **_content(JSON, _ref("Completion")),
                            **_sse(
                                {"anyOf": [_ref("CompletionChunk"), _ref("OpenAIError")]},
                                "A `chat.completion.chunk`, or the error that ends a failed "
                                "stream.",
                            ),
                        },
                    },
                    **_error_responses(JSON, _ref("OpenAIError"), MODEL_ERRORS),
                },
                description="A bearer `sk-...` that is not AUTH_TOKEN is used as the upstream "
                "key for this request. With CACHE_URL set, a request with `temperature` 0 or a "
                "`seed` is answered from the cache when an identical one was answered before "
                "(`X-Cache: HIT` or `MISS`; `Cache-Control: no-cache` skips the cache, "
                "`no-store` keeps the answer out). With TRIM_OPENAI_FACE=1 the oldest turns are "
                "dropped to fit the model's context window.",
                body=_json_body(
                    _ref("ChatCompletionRequest"),
                    {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "Hi"}]},
                ),
                parameters=lang,
                security=openai_security,
            )
        },
        f"{route}/v1/completions": {
            "post": _op(
                TAG_OPENAI,
                "openai_completions",
                "Create a completion",
                {
                    "200": {
                        "description": 'A `text_completion`; with `"stream": true` Server-Sent '
                        "Events of its chunks, then `data: [DONE]`.",
                        "content": {
                            **_content(JSON, _ref("Completion")),
                            **_sse(
                                {"anyOf": [_ref("CompletionChunk"), _ref("OpenAIError")]},
                                "A `text_completion` chunk, or the error that ends a failed "
                                "stream.",
                            ),
                        },
                    },
                    **_error_responses(JSON, _ref("OpenAIError"), MODEL_ERRORS),
                },
                body=_json_body(_ref("CompletionRequest"), {"prompt": "Say hi"}),
                parameters=lang,
                security=openai_security,
            )
        },
        f"{route}/v1/embeddings": {
            "post": _op(
                TAG_OPENAI,
                "openai_embeddings",
                "Create embeddings",
                {
                    "200": {
                        "description": "The embeddings, one per input, in input order.",
                        "content": _content(JSON, _ref("EmbeddingList")),
                    },
                    **_error_responses(JSON, _ref("OpenAIError"), MODEL_ERRORS),
                },
                description="Routed like a chat request (model policy, upstream keys, "
                "retries, limits); the embedded model answers when the upstream would not.",
                body=_json_body(
                    _ref("EmbeddingRequest"), {"model": "text-embedding-3-small", "input": "Hi"}
                ),
                parameters=lang,
                security=openai_security,
            )
        },
        f"{route}/v1/models": {
            "get": _op(
                TAG_OPENAI,
                "openai_list_models",
                "List models",
                {
                    "200": {
                        "description": "The embedded model (unless BACKEND=openai), then the "
                        "upstream's own list when the upstream would answer; only models "
                        "ALLOWED_MODELS allows.",
                        "content": _content(JSON, _ref("ModelList")),
                    },
                    **_error_responses(JSON, _ref("OpenAIError"), (400, 401, 429, 502, 503, 504)),
                },
                parameters=lang,
                security=openai_security,
            )
        },
        f"{route}/v1/models/{{model_id}}": {
            "get": _op(
                TAG_OPENAI,
                "openai_retrieve_model",
                "Retrieve a model",
                {
                    "200": {"description": "The model.", "content": _content(JSON, _ref("Model"))},
                    **_error_responses(
                        JSON, _ref("OpenAIError"), (400, 401, 404, 429, 502, 503, 504)
                    ),
                },
                parameters=[
                    {
                        "name": "model_id",
                        "in": "path",
                        "required": True,
                        "description": "The model id; may contain `/` (`org/name`).",
                        "schema": {"type": "string"},
                    },
                    *lang,
                ],
                security=openai_security,
            )
        },
    }


def _room_operations(settings: Settings) -> dict[str, dict[str, Any]]:
    base = f"{settings.route}/chat-room"
    parameters = [
        {
            "name": "X-Room-Id",
            "in": "header",
            "required": False,
            "description": "The room; without it, the client IP names the room.",
            "schema": {"type": "string", "pattern": "^[A-Za-z0-9_.:-]{1,128}$"},
        },
        _lang_parameter(),
    ]
    errors = _error_responses(JSON, _ref("RoomError"), tuple(sorted((*MODEL_ERRORS, 409))))
    success = _content(JSON, _ref("RoomSuccess"))
    security = _security(settings)
    turn = _json_body(_ref("RoomTurn"), {"role": "user", "content": "Hello"})
    return {
        base: {
            "post": _op(
                TAG_ROOM,
                "chat_room",
                "Say something in the room",
                {"200": {"description": "The answer in `data`.", "content": success}, **errors},
                description="The model gets BOT_DESC, the room's history "
                "(HISTORY_MAX_MESSAGES, forgotten after CONVERSATION_TTL idle seconds) and this "
                "turn; a failed turn leaves the history unchanged. One turn at a time per room: "
                "another one meanwhile gets 409 `chat_room_busy`.",
                body=turn,
                parameters=parameters,
                security=security,
            )
        },
        f"{base}/stream": {
            "post": _op(
                TAG_ROOM,
                "chat_room_stream",
                "Say something in the room, answered as a stream",
                {
                    "200": {
                        "description": "Server-Sent Events: OpenAI chunks as they come, then "
                        '`data: {"code":200,"msg":"success","data":""}` and `data: [DONE]`. An '
                        "error after the first event is one `RoomError` event, no `[DONE]`.",
                        "content": _sse(
                            {
                                "anyOf": [
                                    _ref("CompletionChunk"),
                                    _ref("RoomSuccess"),
                                    _ref("RoomError"),
                                ]
                            },
                            "A chunk, the closing `RoomSuccess`, or the `RoomError` that ends "
                            "a failed stream.",
                        ),
                    },
                    **errors,
                },
                body=turn,
                parameters=parameters,
                security=security,
            )
        },
        f"{base}/reset": {
            "post": _op(
                TAG_ROOM,
                "chat_room_reset",
                "Forget the room's history",
                {
                    "200": {"description": "Done; `data` is empty.", "content": success},
                    **_error_responses(JSON, _ref("RoomError"), (400, 401, 409, 413, 429, 503)),
                },
                parameters=parameters,
                security=security,
            )
        },
    }


def _conversation_operations(settings: Settings) -> dict[str, dict[str, Any]]:
    base = f"{settings.route}/chatgpt"
    security = _security(settings)
    lang = _lang_parameter()
    conversation = {
        "name": "conversation",
        "in": "header",
        "required": True,
        "description": "The conversation id (as `create*` answered it). Missing: 400; not an "
        "id of 1..64 `[A-Za-z0-9]` or unknown: 404.",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9]{1,64}$"},
    }
    text_answer = {"type": "string"}
    # The face answers its errors as the bare localized message.
    error_schema = {"type": "string", "description": "The localized reason."}

    def errors(*statuses: int) -> dict[str, Any]:
        return _error_responses(TEXT, error_schema, statuses)

    def text(description: str, example: str | None = None) -> dict[str, Any]:
        return {"description": description, "content": _content(TEXT, text_answer, example)}

    def text_body(description: str, schema: Schema | None = None) -> dict[str, Any]:
        return {
            "required": False,
            "description": description,
            "content": _content(TEXT, schema or {"type": "string"}),
        }

    answer_stream = _sse(
        {
            "anyOf": [
                {"type": "string", "description": "A piece of the answer."},
                {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {"type": "string", "description": "Stable key."},
                        "message": {"type": "string", "description": "Localized."},
                    },
                },
            ]
        },
        'One `data: "<piece>"` JSON string per piece of the answer, then `data: [DONE]`; an '
        'error after the first event is one `{"error": <key>, "message": <localized>}` event.',
    )
    created = text("The new conversation's id.", "b0WcKTJ3yGQzU9sS2rVh1A")
    create_errors = errors(400, 401, 413, 429, 503)
    turn_errors = errors(400, 401, 404, 409, 413, 429, 502, 503, 504)
    read_errors = errors(400, 401, 404, 429, 503)
    locked_errors = errors(400, 401, 404, 409, 429, 503)

    def post(operation_id: str, summary: str, responses: dict[str, Any], **extra: Any) -> Any:
        params = extra.pop("parameters", [lang])
        return {
            "post": _op(
                TAG_CONV,
                operation_id,
                summary,
                responses,
                parameters=params,
                security=security,
                **extra,
            )
        }

    return {
        f"{base}/create": post(
            "conversation_create",
            "Start a transcript conversation",
            {"200": created, **create_errors},
            body=text_body("The prompt; empty for the original's default."),
            parameters=[
                {
                    "name": "settings",
                    "in": "header",
                    "required": False,
                    "description": "Empty for the default preset, or `FriendChat`.",
                    "schema": {"enum": ["", "FriendChat"]},
                },
                lang,
            ],
        ),
        f"{base}/createTurbo": post(
            "conversation_create_turbo",
            "Start a TURBO_MODEL chat",
            {"200": created, **create_errors},
            body={
                "required": False,
                "description": "The prompt as plain text, or a JSON object (a body starting "
                "with `{` is read as JSON).",
                "content": {
                    **_content(TEXT, {"type": "string", "pattern": f"^(?![{_SPACE}]*\\{{)"}),
                    **_content(JSON, _ref("TurboCreate")),
                },
            },
        ),
        f"{base}/createGPT4": post(
            "conversation_create_gpt4",
            "Start a GPT4_MODEL chat",
            {"200": created, **create_errors},
            body=text_body("The prompt; empty for the default."),
        ),
        f"{base}/createRolePlay": post(
            "conversation_create_role_play",
            "Start a role-play transcript between two named roles",
            {"200": created, **create_errors},
            body=_json_body(
                _ref("RolePlayCreate"),
                {"human_name": "Alice", "ai_name": "Bob", "prompt": "Two friends chat."},
            ),
        ),
        f"{base}/chat": post(
            "conversation_chat",
            "Ask the conversation a question",
            {
                "200": {
                    "description": "The answer (as a stream for a streaming createTurbo "
                    "conversation).",
                    "content": {**_content(TEXT, text_answer), **answer_stream},
                },
                **turn_errors,
            },
            body={
                "required": True,
                "description": "The question; not blank.",
                "content": _content(TEXT, {"type": "string", "pattern": _NON_BLANK}),
            },
            parameters=[conversation, lang],
        ),
        f"{base}/regenerate": post(
            "conversation_regenerate",
            "Answer the last question again, replacing the answer",
            {
                "200": {
                    "description": "The new answer (a stream for a streaming conversation).",
                    "content": {**_content(TEXT, text_answer), **answer_stream},
                },
                **turn_errors,
            },
            parameters=[conversation, lang],
        ),
        f"{base}/rollback": post(
            "conversation_rollback",
            "Forget the last question and answer",
            {"200": text("Done.", "Rollback Succeeded"), **locked_errors},
            parameters=[conversation, lang],
        ),
        f"{base}/context": post(
            "conversation_context",
            "The transcript",
            {
                "200": text("The prompt, a blank line, then `Human: `/`AI: ` lines."),
                **read_errors,
            },
            parameters=[conversation, lang],
        ),
        f"{base}/contextArray": post(
            "conversation_context_array",
            "Questions and answers, alternating",
            {
                "200": {
                    "description": "Oldest first.",
                    "content": _content(JSON, {"type": "array", "items": {"type": "string"}}),
                },
                **read_errors,
            },
            parameters=[conversation, lang],
        ),
        f"{base}/finish": post(
            "conversation_finish",
            "Delete the conversation (its shared copy stays)",
            {"200": text("Done.", "Conversation finished"), **locked_errors},
            parameters=[conversation, lang],
        ),
        f"{base}/store": post(
            "conversation_store",
            "Keep a copy for sharing (again: overwrite it)",
            {
                "200": {
                    **text("Done (the original's answer).", "保存成功"),
                    "headers": {
                        "X-Share-Id": {
                            "description": "The read-only share id for `share/{share_id}`: it "
                            "shows the copy without the conversation id, and is never "
                            "accepted as a conversation id.",
                            "schema": {"type": "string", "pattern": "^sh_[A-Za-z0-9]{1,64}$"},
                        }
                    },
                },
                **read_errors,
            },
            parameters=[conversation, lang],
        ),
        f"{base}/share/{{share_id}}": {
            "get": _op(
                TAG_CONV,
                "conversation_share",
                "A stored conversation; open without credentials",
                {
                    "200": {
                        "description": "The stored copy.",
                        "content": _content(JSON, _ref("SharedConversation")),
                    },
                    **errors(404, 503),
                },
                parameters=[
                    {
                        "name": "share_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    lang,
                ],
                description="`share_id` is the `X-Share-Id` of `store`, or (the original's form, "
                "while SHARE_BY_CONVERSATION_ID is on) the conversation id, which such a link "
                "reveals to anyone holding it.",
                # Open to anyone under every AUTH_MODE, as in the original.
                security=[] if security is not None else None,
            )
        },
        f"{base}/quickAnswer": post(
            "conversation_quick_answer",
            "A one-off answer",
            {
                "200": {
                    "description": 'The answer; with `"stream": true` a stream.',
                    "content": {**_content(TEXT, text_answer), **answer_stream},
                },
                **errors(*MODEL_ERRORS),
            },
            body=_json_body(_ref("QuickAnswer"), {"question": "What is 2+2?"}),
        ),
        f"{base}/summary": post(
            "conversation_summary",
            "Summarize a text (COMPLETION_MODEL)",
            {"200": text("The summary."), **errors(*MODEL_ERRORS)},
            body={
                "required": True,
                "description": "The text; not blank.",
                "content": _content(TEXT, {"type": "string", "pattern": _NON_BLANK}),
            },
        ),
    }


def _other_operations(settings: Settings) -> dict[str, dict[str, Any]]:
    """The WebSocket handshake, the admin view, operations, the playground and these docs."""
    route = settings.route
    paths: dict[str, dict[str, Any]] = {
        f"{route}/ws": {
            "get": _op(
                TAG_WS,
                "websocket",
                "Open the WebSocket (streaming chat)",
                {
                    "101": {
                        "description": "Switching Protocols. Send text frames "
                        "`WsRequestFrame` (`data` holds the `POST /v1/chat` fields plus "
                        "`origin_stream`); get `WsAnswerFrame` frames, the last of each answer "
                        "with `finish_reason` set. An error is one frame with a non-zero "
                        "`code`; the socket stays open. Frames on one socket are answered in "
                        "order and each counts against the rate limits."
                    },
                    **_error_responses(JSON, _ref("ChatError"), (401, 426, 429)),
                },
                description="A request without a WebSocket upgrade is answered 426.",
                parameters=[_lang_parameter()],
                security=_security(settings),
            )
        },
        f"{route}/admin/keys": _admin_view(
            "admin_keys",
            "Every upstream's key pool, masked",
            "Every key, masked, with its state.",
            "KeyList",
        ),
        f"{route}/admin/upstreams": _admin_view(
            "admin_upstreams",
            "The upstreams: breakers, keys (masked), counts",
            "Every upstream; counts are the answering worker's.",
            "UpstreamList",
        ),
        "/healthz": {
            "get": _op(
                TAG_OPS,
                "healthz",
                "Liveness",
                {
                    "200": {
                        "description": "The worker answers.",
                        "content": _content(JSON, _ref("Status"), {"status": "ok"}),
                    }
                },
            )
        },
        "/readyz": {
            "get": _op(
                TAG_OPS,
                "readyz",
                "Readiness",
                {
                    "200": {
                        "description": "Every check is `ok`: the store (STORE_URL) and the shared "
                        "state (SHARED_STATE_URL) answer, and the default backend can answer "
                        "(a usable upstream key, or the embedded model's file and llama.cpp).",
                        "content": _content(JSON, _ref("Readiness")),
                    },
                    "503": {
                        "description": "Not ready: `failing` names the checks that are not `ok`.",
                        "content": _content(JSON, _ref("Readiness")),
                    },
                },
            )
        },
        "/metrics": {
            "get": _op(
                TAG_OPS,
                "metrics",
                "Prometheus metrics",
                {
                    "200": {
                        "description": "Requests by face, route and status, latencies, upstream "
                        "latency and errors, tokens, streams in flight, key states, rate-limit "
                        "rejections. Prometheus text format, or OpenMetrics when `Accept` asks "
                        "for it.",
                        "content": {
                            **_content(TEXT, {"type": "string"}),
                            **_content("application/openmetrics-text", {"type": "string"}),
                        },
                    }
                },
            )
        },
        "/openapi.json": {
            "get": _op(
                TAG_DOCS,
                "openapi",
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": _content(JSON, {"type": "object"}),
                    }
                },
            )
        },
        "/docs": {
            "get": _op(
                TAG_DOCS,
                "docs",
                "This document as a page",
                {"200": {"description": "HTML.", "content": _content(HTML, {"type": "string"})}},
            )
        },
    }
    if settings.playground:
        paths.update(_playground_operations(route))
    return paths


def _admin_view(operation_id: str, summary: str, description: str, schema: str) -> Any:
    """A read-only ``GET`` under ``{ROUTE}/admin``: ``schema`` with 200, or 401/404 for the
    ADMIN_TOKEN bearer."""
    error = _content(JSON, _ref("ApiError"))
    responses = {
        "200": {"description": description, "content": _content(JSON, _ref(schema))},
        "401": {"description": "No or a wrong ADMIN_TOKEN bearer.", "content": error},
        "404": {"description": "ADMIN_TOKEN is not set.", "content": error},
    }
    return {"get": _op(TAG_ADMIN, operation_id, summary, responses, security=[{"adminToken": []}])}


def _playground_operations(route: str) -> dict[str, dict[str, Any]]:
    """The playground page (PLAYGROUND on), its settings, and ``/`` sending browsers to it."""
    paths: dict[str, dict[str, Any]] = {
        f"{route}/playground": {
            "get": _op(
                TAG_DOCS,
                "playground",
                "A chat page to try the service from a browser (PLAYGROUND)",
                {"200": {"description": "HTML.", "content": _content(HTML, {"type": "string"})}},
                description="It chats through the OpenAI-compatible face, so AUTH_MODE and the "
                "rate limits apply to its chats, not to loading the page.",
            )
        },
        f"{route}/playground/config.json": {
            "get": _op(
                TAG_DOCS,
                "playground_config",
                "What the playground page needs to know about this server (no secret)",
                {
                    "200": {
                        "description": "ROUTE, AUTH_MODE, DEFAULT_MODEL and CHAT_LANG.",
                        "content": _content(
                            JSON,
                            {
                                "type": "object",
                                "required": ["route", "auth_mode", "default_model"],
                                "properties": {
                                    "route": {"type": "string"},
                                    "auth_mode": {"enum": ["none", "simple", "normal", "keys"]},
                                    "default_model": {"type": "string"},
                                    "default_lang": {"type": "string"},
                                },
                            },
                        ),
                    }
                },
            )
        },
    }
    if route:
        # With an empty ROUTE, "/" is the POST face of the Docker ChatGPT API platform and
        # nothing else.
        paths["/"] = {
            "get": _op(
                TAG_DOCS,
                "root",
                "Sends browsers to the playground",
                {
                    "302": {
                        "description": "Redirect to the playground page.",
                        "headers": {"Location": {"required": True, "schema": {"type": "string"}}},
                    }
                },
            )
        }
    return paths


def build_document(settings: Settings) -> dict[str, Any]:
    """The OpenAPI 3.1 document for an app built from ``settings`` (a new dict each call).

    Paths follow ROUTE; operation security follows AUTH_MODE (none: no requirement; simple:
    the ``token`` header, or on the OpenAI face a bearer; normal: ``token`` and ``uuid``); the
    playground is listed when PLAYGROUND is on.
    """
    paths: dict[str, dict[str, Any]] = {}
    for group in (
        _model_operations(settings),
        _room_operations(settings),
        _conversation_operations(settings),
        _other_operations(settings),
        openapi_keys.operations(settings),
    ):
        paths.update(group)
    return {
        "openapi": OPENAPI_VERSION,
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "chatservice",
            "version": API_VERSION,
            "summary": "A self-hosted ChatGPT API speaking the request shapes of popular "
            "ChatGPT wrappers.",
            "description": _info_description(settings),
        },
        "tags": TAGS,
        "paths": paths,
        "components": {
            # A copy: the specs' schemas are module constants, and a reader of the document
            # (schemathesis resolving references) may change what it is given.
            "schemas": copy.deepcopy({**_schemas(), **openapi_keys.schemas()}),
            "parameters": {
                "lang": {
                    "name": "lang",
                    "in": "query",
                    "required": False,
                    "description": "Language of error messages (`en`, `zh_CN`, `zh_TW`, `ru`); "
                    "first choice, before a body `lang` and `Accept-Language`. Unknown values "
                    "are ignored.",
                    "schema": {"type": "string"},
                }
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before trying again.",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                }
            },
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "token",
                    "description": "AUTH_MODE=keys: a client key. "
                    "AUTH_MODE=simple: AUTH_TOKEN itself. AUTH_MODE=normal: the "
                    "lowercase hex SHA-256 of AUTH_TOKEN followed by the `uuid` header.",
                },
                "uuid": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "uuid",
                    "description": "AUTH_MODE=normal: 1 to 64 printable ASCII characters, "
                    "accepted once within AUTH_REPLAY_WINDOW seconds.",
                },
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "AUTH_MODE=keys: a client key (`csk-...`), on every face. "
                    "Otherwise the OpenAI-compatible face only. AUTH_MODE=simple: AUTH_TOKEN "
                    "authenticates. Any `sk-...` value that is not AUTH_TOKEN is used as the "
                    "upstream API key for this request (like the `api_key` body field of "
                    "`POST /{ROUTE}`).",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "ADMIN_TOKEN.",
                },
            },
        },
    }


def _info_description(settings: Settings) -> str:
    route = settings.route or "/"
    return (
        f"Every chat face lives under ROUTE (here `{route}`); `/healthz`, `/readyz`, "
        "`/metrics`, `/openapi.json` and `/docs` are at the root and never rate limited. "
        "Every POST path also answers with a trailing slash. Client authentication is "
        f"AUTH_MODE (here `{settings.auth_mode}`). Errors come in each face's own envelope with "
        "a stable machine key and a message localized by the `lang` query parameter, a body "
        "`lang` field, or `Accept-Language`. The WebSocket frames are described by the "
        "`WsRequestFrame` and `WsAnswerFrame` schemas."
    )
