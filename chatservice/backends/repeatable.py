"""The embedded model's answers, independent of what it was asked before.

llama-cpp-python keeps the last evaluation (llama.cpp's KV cache) and evaluates only the
tokens of the next prompt after the part they share: the whole prompt in one batch when
nothing is shared, the part after a shared system prompt, or only the last token when the
same prompt comes again. llama.cpp computes one token alone (a prompt asked again, each
generated token) with other kernels than a batch of several, and they round differently,
so the first sampled token's probabilities differed in their last bits with the path taken.
At a high temperature that changed answers: with the same ``seed`` (or ``temperature: 0``,
answered with a fixed seed), "What is the capital of France?" got "Le Jardin is the capital
of France." when asked twice in a row, and "Le Coeur de la France, ..." as a first question
or after another one (SmolLM2-135M at temperature 1.5, on one of the machines the tests ran on).

:class:`RepeatableLlama` keeps every prompt on the batch path: the cached tokens it reuses
are only those that a prompt's batch computed (never a generated token's row), and the last
two tokens of a prompt are always evaluated again, together. What differs from llama-cpp-
python's own reuse costs nothing for a new prompt, a two-token batch instead of one token
for a prompt asked again, and a conversation's next turn evaluates the previous answer's
tokens in its batch. A prompt longer than llama.cpp's batch (512 tokens) is split into
several batches wherever the reuse starts, so beyond that length a repeat is likely, not
certain.

This module imports llama-cpp-python: import it only where the model is used.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from llama_cpp import Llama


class RepeatableLlama(Llama):
    """llama-cpp-python's ``Llama`` evaluating every prompt's end in a batch, reusing only
    cached rows that a batch computed (see the module doc)."""

    #: Leading rows of the cache computed in one batch with others (prompt tokens), as
    #: opposed to generated tokens, each computed alone.
    _batched_rows = 0

    def generate(self, tokens: Sequence[int], *args: Any, **kwargs: Any) -> Iterator[int]:  # type: ignore[override]
        """Llama's ``generate``, reusing only cached rows that a batch computed, and never the
        prompt's last two tokens' (see the module doc)."""
        tokens = list(tokens)
        # Keeping the state (reset=False) or a model without a per-token cache (recurrent,
        # hybrid): llama-cpp-python's own path.
        partial_cache = not (self._is_recurrent or self._is_hybrid)
        if kwargs.get("reset", True) and not args and partial_cache:
            shared = self.longest_token_prefix(self._input_ids[: self._batched_rows], tokens)
            # Llama's generate then evaluates the rest, two tokens at least, in one batch.
            self.n_tokens = max(0, min(shared, len(tokens) - 2))
            self._batched_rows = len(tokens)
        return super().generate(tokens, *args, **kwargs)
