"""The internal, OpenAI-shaped request and answer every face converts to and from.

Faces parse their own bodies into a :class:`ChatRequest`, a backend answers it with a
:class:`ChatResult` or a stream of :class:`ChatChunk`, and the face renders its envelope
(one request path shared by every face).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, ClassVar, Literal

from chatservice.jsonsafe import scrub_text
from chatservice.settings import Secret

Kind = Literal["chat", "completion", "embedding"]

_COMPLETION_PREFIXES = ("davinci", "babbage", "text-", "curie", "ada")


def is_completion_model(model: str) -> bool:
    """True for models served by the legacy ``/completions`` API (chatgpt-service's "gpt-3" branch).

    Names containing ``instruct`` or starting with ``davinci``, ``babbage``, ``curie``, ``ada``
    or ``text-`` (``text-davinci-003``, ``gpt-3.5-turbo-instruct``).
    """
    name = model.lower().rsplit("/", 1)[-1]
    return "instruct" in name or name.startswith(_COMPLETION_PREFIXES)


def flatten_messages(messages: list[dict[str, str]]) -> str:
    """Turn chat messages into a transcript prompt for a completion model.

    System text comes first as-is; user turns are ``Human:``, assistant turns ``AI:``, and the
    prompt ends with ``AI:`` so the model answers (the stop sequence ``Human:`` of chatgpt-service
    then ends the answer).
    """
    lines = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            lines.append(content)
        elif role == "user":
            lines.append(f"Human: {content}")
        else:
            lines.append(f"AI: {content}")
    lines.append("AI:")
    return "\n".join(lines)


def choice_text(choice: dict[str, Any], delta: bool) -> str:
    """The text of one OpenAI ``choices[i]`` entry: ``text`` (completions), else the
    ``message`` (whole answer) or ``delta`` (stream chunk) content. Raises KeyError/TypeError.
    """
    if "text" in choice:
        return choice["text"] or ""
    message = choice["delta" if delta else "message"]
    return message.get("content") or ""


def events_text(events: list[bytes]) -> str:
    """The content text of relayed chunk events (OpenAI ``chat.completion.chunk`` or
    ``text_completion`` JSON, UTF-8 bytes), joined in order, with one ``json.loads`` for
    them all; an event that is not a chunk adds no text."""
    try:
        bodies = json.loads((b"[" + b",".join(events) + b"]").decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        if len(events) == 1:
            return ""
        return "".join(events_text([event]) for event in events)
    parts = []
    for body in bodies:
        try:
            parts.append(choice_text(body["choices"][0], delta=True))
        except (KeyError, TypeError, IndexError, AttributeError):
            continue
    return scrub_text("".join(parts))


@dataclasses.dataclass
class ChatRequest:
    """One request to a model.

    :ivar kind: ``chat`` (``messages``), ``completion`` (``prompt``) or ``embedding``
        (``prompt`` holds the ``input``: a string, a list of strings or of token ids).
    :ivar model: the model the client asked for.
    :ivar messages: ``[{"role": "system"|"user"|"assistant", "content": str}]`` for chat; on
        the OpenAI-compatible face any message OpenAI accepts (content parts, ``tool_calls``,
        ``tool`` and ``developer`` turns; see :mod:`chatservice.openai_fields`).
    :ivar prompt: the prompt text for completion.
    :ivar max_tokens: upper bound of generated tokens; ``None`` leaves it to the model.
    :ivar params: other request fields actually sent, under OpenAI's names (``temperature``,
        ``top_p``, ``frequency_penalty``, ``presence_penalty``, ``stop``, ``best_of``, and on
        the OpenAI-compatible face any field the client sent, forwarded as is).
    :ivar stream: answer as a stream of chunks.
    :ivar api_key: a key the client brought for this request only; never stored elsewhere.
    :ivar relay: the face relays a stream's chunks unchanged (OpenAI's API): the upstream
        backend then passes each event's bytes (:attr:`ChatChunk.event`) and parses at once
        only those that carry a finish reason, usage or an error.
    :ivar trim: the messages are a history the pipeline may shorten, oldest turns first, to
        fit the model's context window (:mod:`chatservice.context`).
    """

    kind: Kind
    model: str
    max_tokens: int | None
    messages: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    prompt: Any = ""
    params: dict[str, Any] = dataclasses.field(default_factory=dict)
    stream: bool = False
    api_key: Secret | None = None
    relay: bool = False
    trim: bool = False


@dataclasses.dataclass
class ChatResult:
    """A whole answer: ``text``, why it ended, token ``usage`` and the model that answered.

    ``raw`` is the OpenAI-shaped response body (``chat.completion`` or ``text_completion``)
    that the OpenAI-compatible face passes on unchanged.
    """

    text: str
    finish_reason: str | None
    model: str
    usage: dict[str, int] | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: True when the backend knows ``text`` and ``raw`` hold no lone surrogate (the JSON text
    #: it parsed them from had none: :func:`chatservice.jsonsafe.surely_safe_text`).
    clean: dataclasses.InitVar[bool] = False

    def __post_init__(self, clean: bool) -> None:
        # An upstream may send a lone surrogate in valid JSON; it would fail every encoder
        # downstream, so it becomes U+FFFD here, once for every backend and face.
        if clean:
            self.model = scrub_text(self.model)  # it may come from the settings
        else:
            self.text, self.model, self.raw = scrub_text((self.text, self.model, self.raw))


@dataclasses.dataclass
class ChatChunk:
    """A piece of a streamed answer; ``finish_reason`` is set on the last content chunk.

    ``raw`` is the OpenAI-shaped chunk as the backend produced it. Backends yield every
    chunk, including a role-only first chunk and a usage-only last one (``empty``).
    ``event`` is the upstream's event data, as UTF-8 JSON bytes, for a :attr:`ChatRequest.relay`
    request; a plain content chunk's ``text`` and ``raw`` are then parsed from it only when
    read (its ``model`` is the stream's).
    """

    text: str
    model: str
    finish_reason: str | None = None
    usage: dict[str, int] | None = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict)
    event: bytes | None = None
    #: True for a plain content chunk relayed as its event bytes whose ``text`` and ``raw``
    #: are parsed only when read: an observer that needs only the text of many such chunks
    #: reads it from their events at once (:func:`events_text`).
    deferred: ClassVar[bool] = False

    def __post_init__(self) -> None:
        # An upstream may send a lone surrogate in valid JSON; it would fail every encoder
        # downstream, so it becomes U+FFFD here, once for every backend and face.
        self.text, self.model, self.raw = scrub_text((self.text, self.model, self.raw))

    def delta(self) -> dict[str, Any]:
        """The original faces' ``data`` of a stream event: ``{"response": text, "finish_reason",
        "model"}``, plus ``usage`` when the chunk carries it.
        """
        data: dict[str, Any] = {
            "response": self.text,
            "finish_reason": self.finish_reason,
            "model": self.model,
        }
        if self.usage:
            data["usage"] = self.usage
        return data

    @property
    def empty(self) -> bool:
        """True when the chunk carries no text, no finish reason and no usage."""
        return not self.text and self.finish_reason is None and not self.usage


#: Ends a transcript-style answer before the model writes the next human turn.
TRANSCRIPT_STOP = ["Human:"]


def for_model(req: ChatRequest) -> ChatRequest:
    """``req`` as the model it names needs it: a chat request for a completion model
    (:func:`is_completion_model`) becomes a transcript prompt with the stop ``Human:``.
    """
    if req.kind == "chat" and is_completion_model(req.model):
        req.kind, req.prompt = "completion", flatten_messages(req.messages)
        req.params.setdefault("stop", TRANSCRIPT_STOP)
    return req
