"""OpenAI's rules for a chat request's messages and fields, applied whatever the backend.

OpenAI's API (platform.openai.com/docs/api-reference/chat/create) accepts ``content`` as a
string or a list of parts, ``null`` content on an assistant message that carries
``tool_calls``, ``tool`` messages answering a call, and ``developer`` as the newer name of
``system``. Everything else malformed is refused here with a 400 whose ``field`` names the
exact place (``messages[2].content``), so no backend ever sees a shape it cannot render.
Messages are checked, not rewritten: an upstream gets them as the client sent them, and the
embedded model converts them itself.

The bodies of ``chat/completions`` (:data:`CHAT_COMPLETION`), ``completions``
(:data:`COMPLETION`) and ``embeddings`` (:data:`EMBEDDING`) are :class:`chatservice.specs.Spec`
tables: each field's reader (for the objects, the checks here) beside its JSON Schema, so the
face reads the body and the OpenAPI document describes it from the same table.
"""

from __future__ import annotations

from typing import Any

from chatservice import specs, validation
from chatservice.errors import BadRequest
from chatservice.specs import BodyField, Schema, Spec

#: Roles OpenAI accepts (``function`` is the deprecated form of ``tool``).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: Content part types per role: user messages may carry images, audio and files.
_PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
_TEXT_ONLY = ("text",)
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")
ENCODING_FORMATS = ("float", "base64")
#: Alternatives per token: chat's ``top_logprobs``, the legacy completions' ``logprobs``.
MAX_TOP_LOGPROBS = 20
MAX_LEGACY_LOGPROBS = 5


def _read_messages(body: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return check_messages(body.get(name))


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The ``messages`` list, checked message by message.

    Raises ``BadRequest``: ``missing_field``/``not_a_list``/``empty_field`` for the list,
    ``invalid_chat_message`` (not an object, or no string role), ``invalid_chat_role``,
    ``invalid_content``, ``invalid_content_part``, ``invalid_tool_calls`` and
    ``missing_field`` (``tool_call_id``), each with ``field`` naming the place.
    """
    if messages is None:
        raise BadRequest("missing_field", field="messages")
    if not isinstance(messages, list):
        raise BadRequest("not_a_list", field="messages")
    if not messages:
        raise BadRequest("empty_field", field="messages")
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("invalid_chat_message", field="messages", index=index)
        _check_message(message, f"messages[{index}]")
    return messages


def _check_message(message: dict[str, Any], where: str) -> None:
    role = message["role"]
    if role not in CHAT_ROLES:
        raise BadRequest("invalid_chat_role", field=f"{where}.role", roles=", ".join(CHAT_ROLES))
    name = message.get("name")
    if name is not None and not isinstance(name, str):
        raise BadRequest("not_a_string", field=f"{where}.name")
    content = message.get("content")
    calls = message.get("tool_calls")
    if calls is not None:
        if role != "assistant":
            raise BadRequest("invalid_tool_calls", field=f"{where}.tool_calls")
        _check_tool_calls(calls, f"{where}.tool_calls")
    if content is None:
        # Only an assistant turn that called tools (or a legacy function) may say nothing.
        if role == "assistant" and (calls or message.get("function_call") is not None):
            return
        raise BadRequest("missing_field", field=f"{where}.content")
    _check_content(content, _PART_TYPES.get(role, _TEXT_ONLY), f"{where}.content")
    if role == "tool" and not isinstance(message.get("tool_call_id"), str):
        raise BadRequest("missing_field", field=f"{where}.tool_call_id")


def _check_content(content: Any, part_types: tuple[str, ...], where: str) -> None:
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise BadRequest("invalid_content", field=where)
    for index, part in enumerate(content):
        place = f"{where}[{index}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in part_types:
            raise BadRequest("invalid_content_part", field=place, types=", ".join(part_types))
        if kind in ("text", "refusal") and not isinstance(part.get(kind), str):
            raise BadRequest("not_a_string", field=f"{place}.{kind}")
        if kind == "image_url":
            image = part.get("image_url")
            if not isinstance(image, dict) or not isinstance(image.get("url"), str):
                raise BadRequest("not_a_string", field=f"{place}.image_url.url")
        if kind in ("input_audio", "file") and not isinstance(part.get(kind), dict):
            raise BadRequest("invalid_content_part", field=place, types=", ".join(part_types))


def _check_tool_calls(calls: Any, where: str) -> None:
    if not isinstance(calls, list):
        raise BadRequest("invalid_tool_calls", field=where)
    for index, call in enumerate(calls):
        function = call.get("function") if isinstance(call, dict) else None
        if (
            not isinstance(call, dict)
            or not isinstance(call.get("id"), str)
            or not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise BadRequest("invalid_tool_calls", field=f"{where}[{index}]")


def _check_response_format(body: dict[str, Any], name: str) -> None:
    value = body.get(name)
    if value is None:
        return
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in RESPONSE_FORMATS:
        raise BadRequest(
            "invalid_choice", field="response_format.type", choices=", ".join(RESPONSE_FORMATS)
        )
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, dict):
            raise BadRequest("not_an_object", field="response_format.json_schema")
        if not isinstance(spec.get("name"), str):
            raise BadRequest("missing_field", field="response_format.json_schema.name")
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise BadRequest("not_an_object", field="response_format.json_schema.schema")
        validation.boolean(spec, "strict", False)


def _check_tools(body: dict[str, Any], name: str) -> None:
    tools = body.get(name)
    if tools is not None:
        if not isinstance(tools, list):
            raise BadRequest("not_a_list", field="tools")
        for index, tool in enumerate(tools):
            function = tool.get("function") if isinstance(tool, dict) else None
            if (
                not isinstance(tool, dict)
                or tool.get("type") != "function"
                or not isinstance(function, dict)
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("parameters", {}), dict)
                or not isinstance(function.get("description", ""), str)
            ):
                raise BadRequest("invalid_tool", field=f"tools[{index}]")


def _check_tool_choice(body: dict[str, Any], name: str) -> None:
    """``tool_choice``, naming one of ``tools`` (checked before it, in the table's order)."""
    choice = body.get(name)
    if choice is None or choice in TOOL_CHOICES:
        return
    names = {tool["function"]["name"] for tool in body.get("tools") or ()}
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest("invalid_tool_choice", field="tool_choice")
    if function["name"] not in names:
        raise BadRequest("unknown_tool", field="tool_choice", name=function["name"])


def _check_stream_options(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    options = validation.json_object(body, name)
    if options is not None:
        validation.boolean(options, "include_usage", False)
    return options


def _top_logprobs(body: dict[str, Any], name: str) -> int | None:
    count = validation.integer(body, name, 0, MAX_TOP_LOGPROBS)
    if count is not None and body.get("logprobs") is not True:
        # OpenAI answers 400 too: "only allowed when 'logprobs' is enabled".
        raise BadRequest("requires_field", field=name, required="logprobs")
    return count


def _prompt(body: dict[str, Any], name: str) -> str | list[Any]:
    prompt = body.get(name)
    if prompt is None:
        raise BadRequest("missing_field", field=name)
    # A list may hold strings or token ids (OpenAI accepts both): the backend judges the items.
    if not isinstance(prompt, str | list):
        raise BadRequest("invalid_prompt", field=name)
    return prompt


def _embedding_input(body: dict[str, Any], name: str) -> Any:
    """OpenAI's input shapes: a non-empty string, or a non-empty list of non-empty strings,
    of token ids, or of non-empty lists of token ids."""
    value = body.get(name)
    if value is None:
        raise BadRequest("missing_field", field=name)

    def token_ids(item: Any) -> bool:
        return isinstance(item, list) and bool(item) and all(_token(t) for t in item)

    if isinstance(value, str):
        valid = bool(value)
    elif not isinstance(value, list) or not value:
        valid = False
    else:
        valid = (
            all(isinstance(item, str) and item for item in value)
            or token_ids(value)
            or all(token_ids(item) for item in value)
        )
    if not valid:
        raise BadRequest("invalid_embedding_input", field=name)
    return value


def _token(value: Any) -> bool:
    # JSON Schema (and the other faces) count 5.0 as the integer 5.
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _encoding_format(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ENCODING_FORMATS[0]
    # Any other value, a non-string too, is this field's own error (as OpenAI words it).
    if value not in ENCODING_FORMATS:
        raise BadRequest("invalid_encoding_format", field=name)
    return value


# --- the request specs (reading and the OpenAPI schemas) ---------------------------------------

#: ``components/schemas/ChatMessage``: the message shapes every backend takes. Roles ``tool``
#: and ``function``, and parts other than text, are accepted by :func:`check_messages` but
#: left out here: the embedded model refuses some (400 ``unsupported_parameter``), and a tool
#: message needs a call before it.
MESSAGE: Schema = {
    "type": "object",
    "description": "An OpenAI message: `content` a string or a list of parts (`text`; "
    "on user messages also `image_url`, `input_audio`, `file`), `developer` read as "
    "`system`, `null` content on an assistant message with `tool_calls`, and `tool` "
    "messages with `tool_call_id`. Anything else is a 400 naming the field "
    "(`messages[2].content`).",
    "required": ["role", "content"],
    "properties": {
        "role": {"enum": [role for role in CHAT_ROLES if role not in ("tool", "function")]},
        "content": {
            "oneOf": [
                {"type": "string"},
                {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "required": ["type", "text"],
                        "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
                    },
                },
            ]
        },
        "name": {"type": ["string", "null"]},
    },
}

_RESPONSE_FORMAT: Schema = {
    "oneOf": [
        {"type": "null"},
        {
            "type": "object",
            "required": ["type"],
            "properties": {"type": {"enum": [*RESPONSE_FORMATS[:2]]}},
        },
        {
            "type": "object",
            "required": ["type", "json_schema"],
            "properties": {
                "type": {"const": RESPONSE_FORMATS[2]},
                "json_schema": {
                    "type": "object",
                    "required": ["name"],
                    "properties": {
                        "name": {"type": "string"},
                        "schema": {"type": ["object", "null"]},
                        "strict": {"type": ["boolean", "null"]},
                    },
                },
            },
        },
    ]
}
_TOOLS: Schema = {
    "type": ["array", "null"],
    "items": {
        "type": "object",
        "required": ["type", "function"],
        "properties": {
            "type": {"const": "function"},
            "function": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "description": {"type": "string"},
                    "parameters": {"type": "object"},
                },
            },
        },
    },
}
# A named function is valid only with the matching tool, which JSON Schema cannot say: the
# schema lists the strings, the description the object.
_TOOL_CHOICE: Schema = {"enum": [*TOOL_CHOICES, None]}

#: Fields a chat and a completion request share, checked in this order as OpenAI checks them.
SHARED: tuple[BodyField, ...] = (
    BodyField("temperature", "number", minimum=0, maximum=2),
    BodyField("top_p", "number", minimum=0, maximum=1),
    BodyField("frequency_penalty", "number", minimum=-2, maximum=2),
    BodyField("presence_penalty", "number", minimum=-2, maximum=2),
    BodyField("n", "integer", minimum=1, maximum=128),
    BodyField("stop", "stop", max_items=4),
    BodyField("seed", "integer", minimum=-(2**63), maximum=2**63 - 1),
    BodyField("user", "string"),
    BodyField("logit_bias", "object"),
    BodyField(
        "stream_options",
        "custom",
        reader=_check_stream_options,
        json_schema={
            "type": ["object", "null"],
            "properties": {"include_usage": {"type": ["boolean", "null"]}},
        },
    ),
    BodyField(
        "response_format", "custom", reader=_check_response_format, json_schema=_RESPONSE_FORMAT
    ),
    BodyField("tools", "custom", reader=_check_tools, json_schema=_TOOLS),
    BodyField(
        "tool_choice",
        "custom",
        reader=_check_tool_choice,
        json_schema=_TOOL_CHOICE,
        description='`none`, `auto`, `required`, or `{"type": "function", "function": '
        '{"name": ...}}` naming one of `tools`.',
    ),
)
#: The fields the request itself carries (after :data:`SHARED`; ``max_completion_tokens``
#: goes upstream under its own name, checked here).
OWN: tuple[BodyField, ...] = (
    specs.MODEL,
    specs.STREAM,
    BodyField("max_tokens", "positive_integer"),
    BodyField("max_completion_tokens", "positive_integer"),
    specs.LANG,
)

#: ``POST /{ROUTE}/v1/chat/completions``.
CHAT_COMPLETION = Spec(
    (
        BodyField(
            "messages",
            "custom",
            required=True,
            reader=_read_messages,
            json_schema={
                "type": "array",
                "minItems": 1,
                "items": {"$ref": "#/components/schemas/ChatMessage"},
            },
        ),
        *SHARED,
        BodyField("logprobs", "boolean", default=False),
        BodyField(
            "top_logprobs",
            "custom",
            reader=_top_logprobs,
            json_schema={"type": ["integer", "null"], "minimum": 0, "maximum": MAX_TOP_LOGPROBS},
            description="Alternatives per token; only with `logprobs: true` (else 400 "
            "`requires_field`).",
        ),
        *OWN,
    ),
    # OpenAI's rule: top_logprobs only with logprobs true (else 400 requires_field).
    extra={
        "if": {"required": ["top_logprobs"], "properties": {"top_logprobs": {"type": "integer"}}},
        "then": {"required": ["logprobs"], "properties": {"logprobs": {"const": True}}},
    },
)
#: ``POST /{ROUTE}/v1/completions`` (OpenAI's legacy completions).
COMPLETION = Spec(
    (
        BodyField(
            "prompt",
            "custom",
            required=True,
            reader=_prompt,
            json_schema={"type": ["string", "array"]},
            description="A string, or a list of strings or token ids.",
        ),
        *SHARED,
        # The legacy API's logprobs: how many alternatives per token, 0..5.
        BodyField("logprobs", "integer", minimum=0, maximum=MAX_LEGACY_LOGPROBS),
        *OWN,
    )
)
_TOKEN_IDS: Schema = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
#: ``POST /{ROUTE}/v1/embeddings``; other fields are forwarded unchecked.
EMBEDDING = Spec(
    (
        BodyField(
            "input",
            "custom",
            required=True,
            reader=_embedding_input,
            json_schema={
                "anyOf": [
                    {"type": "string", "minLength": 1},
                    {"type": "array", "minItems": 1, "items": {"type": "string", "minLength": 1}},
                    _TOKEN_IDS,
                    {"type": "array", "minItems": 1, "items": _TOKEN_IDS},
                ],
            },
            description="A non-empty string, or a non-empty list of non-empty strings, of token "
            "ids, or of lists of token ids (token ids go to an upstream only: the embedded model "
            "takes text).",
        ),
        BodyField("model", "string", required=True, non_empty=True),
        BodyField(
            "encoding_format",
            "custom",
            reader=_encoding_format,
            json_schema={"enum": [*ENCODING_FORMATS, None]},
            default=ENCODING_FORMATS[0],
        ),
        specs.LANG,
    )
)
