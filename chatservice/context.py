"""Context windows, and fitting a history into one: the pipeline's context step.

A request that keeps history (a conversation's turn, a chat-room turn, the Docker ChatGPT API
platform's ``continuous`` dialogue, and the OpenAI-compatible face with TRIM_OPENAI_FACE) loses its
oldest turns, one at a time, until its prompt plus ``max_tokens`` fits the model's context
window. The system prompt and the newest turn are never dropped; when even they do not fit,
the request is refused with a 400 ``context_length_exceeded`` before any upstream call. At
most half the window is kept for the answer: a ``max_tokens`` beyond it (3000 for a 2048-token
model) would leave no room for any prompt, and backends clip it themselves (llama.cpp does).

Windows come from CONTEXT_WINDOWS (``model@upstream``, then ``model``), then the built-in
:data:`WINDOWS` (the exact name, else the longest prefix followed by ``-``); the embedded model's
window is LOCAL_CONTEXT_TOKENS. A model with no known window is not trimmed (its upstream
judges).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from chatservice.errors import context_length_exceeded
from chatservice.models import ChatRequest, flatten_messages
from chatservice.settings import Settings
from chatservice.tokens import TokenCounter, upper_bound

log = logging.getLogger(__name__)

#: Context windows in tokens, by model name or name prefix (the providers' model pages).
WINDOWS: dict[str, int] = {
    "gpt-5": 400_000,
    "gpt-4.1": 1_047_576,
    "gpt-4o": 128_000,
    "chatgpt-4o": 128_000,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106-preview": 128_000,
    "gpt-4-0125-preview": 128_000,
    "gpt-4-32k": 32_768,
    "gpt-4": 8_192,
    "gpt-3.5-turbo-instruct": 4_096,
    "gpt-3.5-turbo": 16_385,
    "o1-mini": 128_000,
    "o1": 200_000,
    "o3": 200_000,
    "o4-mini": 200_000,
    "text-davinci-003": 4_097,
    "text-davinci-002": 4_097,
    "davinci-002": 16_384,
    "babbage-002": 16_384,
    "deepseek-chat": 64_000,
    "deepseek-reasoner": 64_000,
    "claude-3": 200_000,
    "llama3": 8_192,
    "llama-3.1": 131_072,
    "mistral": 32_768,
    "qwen2.5": 32_768,
}

D = TypeVar("D")


class ContextWindows:
    """The context step: :meth:`window` per model and route, :meth:`fit` for a request.

    :param settings: CONTEXT_WINDOWS and LOCAL_CONTEXT_TOKENS.
    :param counter: the service's :class:`~chatservice.tokens.TokenCounter`.
    """

    def __init__(self, settings: Settings, counter: TokenCounter) -> None:
        self.overrides = settings.context_windows
        self.local_window = settings.local_context_tokens
        self.counter = counter

    def window(self, model: str, upstream: str, embedded: bool = False) -> int | None:
        """The context window of ``model`` answered through ``upstream`` (its
        ``[[upstreams]]`` name, else ``upstream``; ``local`` for the embedded model, as
        ``embedded`` says), or ``None`` when unknown.
        """
        for name in (f"{model}@{upstream}", model):
            if name in self.overrides:
                return self.overrides[name]
        if embedded:
            return self.local_window
        bare = model.rsplit("/", 1)[-1].lower()
        if bare in WINDOWS:
            return WINDOWS[bare]
        prefixes = [prefix for prefix in WINDOWS if bare.startswith(prefix + "-")]
        return WINDOWS[max(prefixes, key=len)] if prefixes else None

    def fit(
        self,
        draft: D,
        build: Callable[[D], ChatRequest],
        shorter: Callable[[D], D | None],
        upstream: str,
        embedded: bool = False,
    ) -> ChatRequest:
        """``build(draft)``, or of the longest ``shorter(...)`` of it that fits the window.

        Raises ``BadRequest`` (``context_length_exceeded``) when nothing shorter is left.
        """
        req = build(draft)
        window = self.window(req.model, upstream, embedded)
        if window is None:
            return req
        dropped = 0
        while not self.fits(req, window, embedded):
            smaller = shorter(draft)
            if smaller is None:
                raise context_length_exceeded(window, self.counter.count_request(req, embedded))
            draft, req, dropped = smaller, build(smaller), dropped + 1
        if dropped:
            log.info("dropped %d oldest turns to fit %d tokens of %s", dropped, window, req.model)
        return req

    def fits(self, req: ChatRequest, window: int, embedded: bool) -> bool:
        """Whether ``req``'s prompt plus its answer tokens fit in ``window`` tokens."""
        answer = min(answer_tokens(req), window // 2)
        if upper_bound(req) + answer <= window:
            return True  # plainly fits: no tokenizer needed
        return self.counter.count_request(req, embedded) + answer <= window


def answer_tokens(req: ChatRequest) -> int:
    """The answer tokens ``req`` asks for: ``max_tokens`` (or ``max_completion_tokens``), 0
    when it sets none.
    """
    value: Any = req.max_tokens or req.params.get("max_completion_tokens")
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def without_oldest_turn(req: ChatRequest) -> ChatRequest | None:
    """``req`` without its oldest turn: the first message after the leading system messages
    and the messages up to the next ``user`` one (a transcript prompt is written anew). The
    newest message is kept: ``None`` when nothing else is left to drop.
    """
    messages = req.messages
    start = 0
    while start < len(messages) and messages[start].get("role") in ("system", "developer"):
        start += 1
    end = start + 1
    while end < len(messages) - 1 and messages[end].get("role") != "user":
        end += 1
    if end > len(messages) - 1:
        return None
    kept = [*messages[:start], *messages[end:]]
    if req.kind == "completion":  # a chat sent to a completion model as a transcript
        return dataclasses.replace(req, messages=kept, prompt=flatten_messages(kept))
    return dataclasses.replace(req, messages=kept)
