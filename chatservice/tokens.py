"""Token counts the service makes itself, for budgets and for streams that report no usage.

An approximation until one token counter serves the whole service: OpenAI's rule of thumb of
about four characters of English text per token, rounded up, plus the chat format's framing
(4 tokens per message and 3 to prime the answer, as in OpenAI's cookbook "How to count tokens
with tiktoken"). It errs towards more tokens for English and fewer for CJK text, where a
character is often a token or more; budgets settle with the upstream's own usage whenever it
reports one.
"""

from __future__ import annotations

import json
import math
from typing import Any

from chatservice.models import ChatRequest

#: Characters per token of the approximation.
CHARS_PER_TOKEN = 4
#: Tokens the chat format adds around each message, and to prime the answer.
PER_MESSAGE = 4
PRIMING = 3


def count_text_tokens(text: str) -> int:
    """Approximate tokens of ``text``: ceil(characters / 4); 0 for an empty string."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def count_prompt_tokens(req: ChatRequest) -> int:
    """Approximate prompt tokens of ``req``: its messages (content of any shape, as JSON when
    not a string) or its prompt (a string or a list of strings).
    """
    if req.kind == "chat":
        total = PRIMING
        for message in req.messages:
            total += PER_MESSAGE + count_text_tokens(_text(message.get("content")))
        return total
    return count_text_tokens(_text(req.prompt))


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return "".join(value)
    return json.dumps(value, ensure_ascii=False)
