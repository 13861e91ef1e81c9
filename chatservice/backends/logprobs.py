"""Log-probabilities of the embedded model's tokens, without llama.cpp's ``logits_all``.

llama-cpp-python computes ``logprobs`` only for a model loaded with ``logits_all``, which keeps
every position's logits: the context size times the vocabulary (about 400 MB for
SmolLM2-135M at 2,048 tokens) in every worker. Here the logits are read one step at a time
instead: :class:`TokenLogprobs` is a logits processor, which llama-cpp-python calls before
sampling each token with that step's logits (indexed by token id, before the repeat
penalty, the grammar, top-k/top-p and the temperature), and :class:`ObservedLlama` tells it
which token was then sampled. Only the current step's log-probabilities are kept.

The values are those of the model's own distribution (log-softmax of the raw logits), as
OpenAI's API and llama-cpp-python's ``logits_all`` implementation give them: the
temperature, penalties and a ``response_format`` grammar change which token is chosen, not
the reported log-probabilities.

This module imports NumPy and llama-cpp-python: import it only where the model is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
from llama_cpp import Llama

from chatservice.backends.repeatable import RepeatableLlama


class TokenLogprobs:
    """A llama-cpp-python logits processor recording each sampled token's OpenAI
    ``logprobs.content`` entry, for one generation.

    An entry is ``{"token": str, "logprob": float, "bytes": [int], "top_logprobs": [{"token",
    "logprob", "bytes"}, ...]}`` with ``top`` alternatives, most probable first (ties by token
    id). A token whose bytes are not whole UTF-8 characters is written with ``\\x..`` escapes
    in ``token``; ``bytes`` are exact. Log-probabilities are natural logarithms (≤ 0) of the
    model's distribution before temperature (see the module doc).

    :param llama: the model, to write tokens as bytes.
    :param top: alternatives per entry, 0..20.
    """

    def __init__(self, llama: Llama, top: int) -> None:
        self._llama = llama
        self._top = top
        self._logprobs: np.ndarray | None = None
        self.entries: list[dict[str, Any]] = []
        # The content's bytes given out by :meth:`take`, and where the next entry starts.
        self._given = 0
        self._next = 0
        self._next_start = 0

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """Keep this step's log-probabilities; ``scores`` (all tokens' logits, by token id)
        are returned unchanged. Runs on the model's thread."""
        # A copy: the samplers after this one reorder and change the same buffer.
        self._logprobs = Llama.logits_to_logprobs(scores)
        return scores

    def sampled(self, token: int) -> None:
        """Record the entry of ``token``, just sampled from the last step's distribution."""
        logprobs = self._logprobs
        if logprobs is None:  # no step seen: nothing to describe
            return
        top = []
        if self._top:
            ids = np.argpartition(logprobs, -self._top)[-self._top :]
            ranked = sorted((-float(logprobs[i]), int(i)) for i in ids)
            top = [self._entry(i, -negative) for negative, i in ranked]
        entry = self._entry(token, float(logprobs[token]))
        entry["top_logprobs"] = top
        self.entries.append(entry)

    def _entry(self, token: int, logprob: float) -> dict[str, Any]:
        piece = self._llama.detokenize([token])
        return {
            "token": piece.decode("utf-8", errors="backslashreplace"),
            "logprob": logprob,
            "bytes": list(piece),
        }

    def take(self, text: str) -> list[dict[str, Any]]:
        """The entries of the tokens that wrote ``text``, the content's next piece (all of it
        for a whole answer, a chunk's delta when streamed). A token counts when its first byte
        is in the content, so one that a stop string cuts is given whole; the end-of-text
        token, never written, is never given.
        """
        self._given += len(text.encode())
        taken = []
        while self._next < len(self.entries) and self._next_start < self._given:
            entry = self.entries[self._next]
            taken.append(entry)
            self._next += 1
            self._next_start += len(entry["bytes"])
        return taken

    def fill(self, choice: dict[str, Any], text: str, delta: bool) -> None:
        """Set an OpenAI ``choices[i].logprobs`` from :meth:`take` for the choice's ``text``:
        ``{"content": [entries], "refusal": null}``; a stream chunk with no text keeps
        ``null``."""
        if delta and not text:
            choice["logprobs"] = None
            return
        choice["logprobs"] = {"content": self.take(text), "refusal": None}


class ObservedLlama(RepeatableLlama):
    """llama-cpp-python's ``Llama`` (as :class:`~chatservice.backends.repeatable.RepeatableLlama`
    evaluates prompts), telling the :class:`TokenLogprobs` among a generation's logits
    processors which token each step sampled (llama.cpp's sampler chain, where the processors
    run, learns the choice only after they ran)."""

    def generate(  # type: ignore[override]
        self, tokens: Any, *args: Any, logits_processor: Any = None, **kwargs: Any
    ) -> Iterator[int]:
        """Llama's ``generate``, unchanged, with each yielded token reported."""
        observers = [p for p in logits_processor or () if isinstance(p, TokenLogprobs)]
        inner = super().generate(tokens, *args, logits_processor=logits_processor, **kwargs)
        if not observers:
            return (yield from inner)
        try:
            sent = None
            while True:
                token = inner.send(sent)
                for observer in observers:
                    observer.sampled(token)
                sent = yield token
        except StopIteration:
            return None
        finally:
            # Closing this generator (the caller stopped at a stop string, EOS or max_tokens)
            # closes llama's.
            inner.close()
