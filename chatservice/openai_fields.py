"""OpenAI's rules for a chat request's messages and fields, applied whatever the backend.

OpenAI's API (platform.openai.com/docs/api-reference/chat/create) accepts ``content`` as a
string or a list of parts, ``null`` content on an assistant message that carries
``tool_calls``, ``tool`` messages answering a call, and ``developer`` as the newer name of
``system``. Everything else malformed is refused here with a 400 whose ``field`` names the
exact place (``messages[2].content``), so no backend ever sees a shape it cannot render.
Messages are checked, not rewritten: an upstream gets them as the client sent them, and the
embedded model converts them itself.
"""

from __future__ import annotations

from typing import Any

from chatservice import validation
from chatservice.errors import BadRequest

#: Roles OpenAI accepts (``function`` is the deprecated form of ``tool``).
CHAT_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
#: Content part types per role: user messages may carry images, audio and files.
_PART_TYPES = {
    "user": ("text", "image_url", "input_audio", "file"),
    "assistant": ("text", "refusal"),
}
_TEXT_ONLY = ("text",)
#: ``(name, minimum, maximum)`` of OpenAI's numeric ranges.
_NUMBERS = (
    ("temperature", 0, 2),
    ("top_p", 0, 1),
    ("frequency_penalty", -2, 2),
    ("presence_penalty", -2, 2),
)
MAX_STOP = 4
MAX_N = 128
MAX_TOP_LOGPROBS = 20
TOOL_CHOICES = ("none", "auto", "required")
RESPONSE_FORMATS = ("text", "json_object", "json_schema")


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


def check_fields(body: dict[str, Any]) -> None:
    """OpenAI's types and ranges for the optional fields a chat or completion request shares.

    ``temperature`` 0..2, ``top_p`` 0..1, penalties -2..2, ``n`` 1..128, at most 4 ``stop``
    strings, ``seed`` an integer, ``logprobs`` a boolean (``top_logprobs`` 0..20 only with
    ``logprobs: true``, else ``requires_field``), and the shapes of ``response_format``,
    ``tools``, ``tool_choice``, ``stream_options`` and ``user``. Raises ``BadRequest``
    naming the field.
    """
    for name, minimum, maximum in _NUMBERS:
        validation.number(body, name, minimum, maximum)
    validation.integer(body, "n", 1, MAX_N)
    validation.stop_sequences(body, "stop", MAX_STOP)
    validation.integer(body, "seed", -(2**63), 2**63 - 1)
    validation.boolean(body, "logprobs", False)
    validation.integer(body, "top_logprobs", 0, MAX_TOP_LOGPROBS)
    if body.get("top_logprobs") is not None and body.get("logprobs") is not True:
        # OpenAI answers 400 too: "only allowed when 'logprobs' is enabled".
        raise BadRequest("requires_field", field="top_logprobs", required="logprobs")
    validation.string(body, "user")
    _check_object(body, "logit_bias")
    options = _check_object(body, "stream_options")
    if options is not None:
        validation.boolean(options, "include_usage", False)
    _check_response_format(body.get("response_format"))
    _check_tools(body.get("tools"), body.get("tool_choice"))


def _check_object(body: dict[str, Any], name: str) -> dict[str, Any] | None:
    value = body.get(name)
    if value is not None and not isinstance(value, dict):
        raise BadRequest("not_an_object", field=name)
    return value


def _check_response_format(value: Any) -> None:
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


def _check_tools(tools: Any, choice: Any) -> None:
    names = set()
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
            names.add(function["name"])
    if choice is None or choice in TOOL_CHOICES:
        return
    function = choice.get("function") if isinstance(choice, dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        raise BadRequest("invalid_tool_choice", field="tool_choice")
    if function["name"] not in names:
        raise BadRequest("unknown_tool", field="tool_choice", name=function["name"])
