"""How a request's OpenAI fields become llama-cpp-python calls for the embedded model.

:func:`plan` reads a :class:`~chatservice.models.ChatRequest` (already checked against
OpenAI's shapes and ranges by the face) and returns a :class:`LlamaCall`: the messages as the
GGUF chat template can render them, the keyword arguments of ``create_chat_completion`` /
``create_completion``, how many choices to generate and whether a stream ends with a usage
chunk. What the embedded model cannot do is a 400 ``unsupported_parameter`` naming the field,
never silently dropped. :func:`merge_choices` and :func:`usage_chunk` assemble the answers.
"""

from __future__ import annotations

import dataclasses
import random
import time
from typing import Any

from chatservice.errors import BadRequest
from chatservice.models import ChatRequest

#: Fields passed to llama-cpp-python under the same name and meaning.
PASSED = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop", "seed")
#: Fields handled here (turned into arguments, choices or chunks).
HANDLED = (
    "max_completion_tokens",
    # llama.cpp's own, which OpenAI's fields cannot express (localtuning's defaults).
    "repeat_penalty",
    "n",
    "response_format",
    "tools",
    "tool_choice",
    "stream_options",
    "logprobs",
    "top_logprobs",
)
#: Fields that describe the request without changing the answer: accepted and not used.
#: ``best_of`` (completions only) is sent by chatgpt-service's ``/v1/chat`` and means one try
#: here.
INFORMATIONAL = ("user", "metadata", "store", "service_tier", "parallel_tool_calls", "best_of")
#: A tool result reaches the model as a user turn: the GGUF templates know no ``tool`` role.
TOOL_RESULT = "Result of the function call {id}:\n{content}"


@dataclasses.dataclass
class LlamaCall:
    """One request as llama-cpp-python calls.

    :ivar chat: ``create_chat_completion`` (else ``create_completion`` with ``prompt``).
    :ivar kwargs: its keyword arguments (``messages`` or ``prompt`` included, ``stream`` not).
    :ivar n: choices to generate, one generation each.
    :ivar include_usage: a stream ends with a usage-only chunk (``stream_options``).
    :ivar tools: answer through llama-cpp-python's ChatML function-calling format.
    :ivar top_logprobs: alternatives per token when ``logprobs`` is asked (0..20), else None.
    """

    chat: bool
    kwargs: dict[str, Any]
    n: int = 1
    include_usage: bool = False
    tools: bool = False
    top_logprobs: int | None = None
    base_seed: int = dataclasses.field(default_factory=lambda: random.getrandbits(31))

    def for_choice(self, index: int) -> dict[str, Any]:
        """The arguments of the ``index``-th generation: its own seed, so choices differ
        (llama-cpp-python reuses one seed per call when none is given) yet stay reproducible
        when the request sets ``seed``."""
        kwargs = dict(self.kwargs)
        if self.n > 1:
            kwargs["seed"] = kwargs.get("seed", self.base_seed) + index
        return kwargs


def plan(req: ChatRequest, model_id: str, context_tokens: int) -> LlamaCall:
    """The llama-cpp-python calls for ``req``. Raises ``BadRequest``:
    ``unsupported_parameter`` (logit_bias, an image, a streamed ``auto`` tool choice,
    logprobs of a completion or of tool calls, an unknown field...).
    """
    params = req.params
    for name in params:
        if name not in PASSED + HANDLED + INFORMATIONAL:
            raise _unsupported(name, model_id)
    kwargs = {name: params[name] for name in PASSED if params.get(name) is not None}
    max_tokens = req.max_tokens or params.get("max_completion_tokens")
    # A bound beyond the context (the Docker ChatGPT API platform's published clients send
    # 3000) means "until the context is full", which is llama-cpp-python's None.
    if max_tokens is not None and max_tokens <= context_tokens:
        kwargs["max_tokens"] = max_tokens
    call = LlamaCall(
        # The wrapper services' faces turn a chat into a transcript prompt for completion
        # models, and the embedded model's id contains "instruct": it is a chat model, so the
        # chat stays one.
        chat=req.kind == "chat" or bool(req.messages),
        kwargs=kwargs,
        n=params.get("n") or 1,
        include_usage=bool(
            req.stream and (params.get("stream_options") or {}).get("include_usage")
        ),
    )
    # Chat's logprobs is a boolean; the legacy completions' an integer 0..5 (0 included).
    logprobs = params.get("logprobs")
    if logprobs is True if call.chat else logprobs is not None:
        # The legacy completions' logprobs have another shape, and the function-calling
        # format answers with several generations: neither is written per token here.
        if not call.chat or (params.get("tools") and params.get("tool_choice") != "none"):
            raise _unsupported("logprobs", model_id)
        call.top_logprobs = params.get("top_logprobs") or 0
    if not call.chat:
        kwargs["prompt"] = req.prompt
        return call
    _response_format(params.get("response_format"), kwargs, model_id)
    tools, choice = params.get("tools"), params.get("tool_choice")
    if tools and choice != "none":
        call.tools = True
        if "response_format" in kwargs:
            raise _unsupported("response_format", model_id)
        kwargs["tools"], kwargs["tool_choice"] = tools, _tool_choice(tools, choice, req, model_id)
    kwargs["messages"] = chat_messages(req.messages, model_id, keep_tool_calls=call.tools)
    return call


def _unsupported(field: str, model_id: str) -> BadRequest:
    return BadRequest("unsupported_parameter", field=field, model=model_id)


def _response_format(value: Any, kwargs: dict[str, Any], model_id: str) -> None:
    """``json_object`` and ``json_schema`` become llama-cpp-python's grammar-constrained
    ``json_object`` (with the schema when there is one)."""
    kind = value.get("type") if isinstance(value, dict) else None
    if kind == "json_object":
        kwargs["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema = value["json_schema"].get("schema")
        kwargs["response_format"] = {"type": "json_object"}
        if schema is not None:
            kwargs["response_format"]["schema"] = schema


def _tool_choice(tools: list[Any], choice: Any, req: ChatRequest, model_id: str) -> Any:
    """llama-cpp-python's function-calling format knows ``auto`` and a named function.

    ``required`` with a single tool is that tool; ``auto`` cannot be streamed there.
    """
    if choice == "required":
        if len(tools) != 1:
            raise _unsupported("tool_choice", model_id)
        return {"type": "function", "function": {"name": tools[0]["function"]["name"]}}
    if choice is None or choice == "auto":
        if req.stream:
            raise _unsupported("tool_choice", model_id)
        return "auto"
    return choice


def chat_messages(
    messages: list[dict[str, Any]], model_id: str, keep_tool_calls: bool = False
) -> list[dict[str, Any]]:
    """OpenAI messages as the GGUF chat template renders them: ``role`` and string ``content``.

    ``developer`` is ``system``; text parts are joined (an image, audio or file part is
    ``unsupported_parameter``: the model cannot see); an assistant's tool calls are written
    as the function-calling format writes them (or kept for it); tool results become user
    turns. With ``keep_tool_calls`` a system turn is added when there is none, since the
    function-calling format describes the tools there.
    """
    converted = []
    for index, message in enumerate(messages):
        role = message["role"]
        text = _text(message.get("content"), f"messages[{index}].content", model_id)
        if role == "developer":
            role = "system"
        elif role in ("tool", "function"):
            role = "user"
            text = TOOL_RESULT.format(
                id=message.get("tool_call_id") or message.get("name") or "", content=text
            )
        turn: dict[str, Any] = {"role": role, "content": text}
        calls = message.get("tool_calls") or []
        if calls and keep_tool_calls:
            turn["tool_calls"] = calls
        elif calls:
            written = [
                f"functions.{call['function']['name']}:\n{call['function']['arguments']}"
                for call in calls
            ]
            turn["content"] = "\n".join(([text] if text else []) + written)
        converted.append(turn)
    if keep_tool_calls and not any(turn["role"] == "system" for turn in converted):
        converted.insert(0, {"role": "system", "content": ""})
    return converted


def _text(content: Any, where: str, model_id: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    texts = []
    for index, part in enumerate(content):
        if part["type"] not in ("text", "refusal"):
            raise _unsupported(f"{where}[{index}]", model_id)
        texts.append(part[part["type"]])
    return "\n".join(texts)


def merge_choices(bodies: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer body from ``n`` generations: their choices in order, usage added up (the
    prompt counted once, as OpenAI counts it)."""
    body = bodies[0]
    body["choices"] = [dict(b["choices"][0], index=i) for i, b in enumerate(bodies)]
    usage = body.get("usage")
    if usage:
        completion = sum((b.get("usage") or {}).get("completion_tokens", 0) for b in bodies)
        usage["completion_tokens"] = completion
        usage["total_tokens"] = usage["prompt_tokens"] + completion
    return body


def usage_chunk(
    first: dict[str, Any], prompt_tokens: int, completion_tokens: int
) -> dict[str, Any]:
    """The usage-only last chunk of a stream (``stream_options.include_usage``), with the id
    and ``object`` of the stream's ``first`` chunk."""
    return {
        "id": first.get("id"),
        "object": first.get("object", "chat.completion.chunk"),
        "created": first.get("created", int(time.time())),
        "model": first.get("model"),
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


class TokenTally:
    """A llama-cpp-python logits processor that only counts: the prompt's tokens (the
    sequence it first sees; with ``n`` choices the prompt counts once, as OpenAI counts it)
    and the tokens sampled in all generations. Streams carry no usage of their own.
    Runs on the model's thread.
    """

    def __init__(self) -> None:
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Count one sampled token; ``scores`` are returned unchanged."""
        if not self.completion_tokens:
            self.prompt_tokens = len(input_ids)
        self.completion_tokens += 1
        return scores
