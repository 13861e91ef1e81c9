"""How the embedded model is asked: its defaults, and the guard that ends a looping answer.

A 135M-parameter model answers far better with a short instruction and a little sampling than
with llama-cpp-python's defaults, and greedy decoding makes it loop (bench/quality.py measures
both). So, for each request to the embedded model:

- LOCAL_SYSTEM_PROMPT is sent as the system message when a chat request has none (empty: never).
- ``temperature`` and ``top_p`` default to LOCAL_TEMPERATURE and LOCAL_TOP_P when the request
  does not send them; ``temperature: 0`` (greedy, which loops) is answered with the defaults
  and a fixed seed, so it stays repeatable. llama.cpp's repeat penalty, which OpenAI's fields
  cannot express, is LOCAL_REPEAT_PENALTY, or the request's own ``repeat_penalty`` field.
- With LOCAL_LOOP_GUARD, :class:`LoopGuard` ends the generation once the answer's tail
  repeats itself; the answer then has finish_reason ``length`` and, when answered whole (not
  streamed), is cut before the first repetition.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from chatservice.settings import Settings

#: Seed used for ``temperature: 0`` so that it stays deterministic (see the module doc).
ZERO_TEMPERATURE_SEED = 0
#: The longest repeated unit (tokens) the guard looks for: about two sentences.
MAX_PERIOD = 48
#: An exact repetition is a loop once the repeated span is at least this many tokens and
#: holds at least three copies (``"la Femme, la Femme, la Femme,"``: 12 tokens).
MIN_REPEATED_TOKENS = 12
#: Near repetitions (a numbered list of one item, over and over): at most this many distinct
#: tokens among the last :data:`WINDOW` ones. Ordinary prose has about half distinct tokens.
WINDOW = 64
MAX_DISTINCT = 16
#: Tokens the guard looks at: enough for three copies of the longest unit, or a window.
TAIL = 3 * MAX_PERIOD + WINDOW


@dataclasses.dataclass(frozen=True)
class Defaults:
    """The embedded model's defaults (LOCAL_SYSTEM_PROMPT, LOCAL_TEMPERATURE, LOCAL_TOP_P,
    LOCAL_REPEAT_PENALTY, LOCAL_LOOP_GUARD).
    """

    system_prompt: str
    temperature: float
    top_p: float
    repeat_penalty: float
    loop_guard: bool

    @classmethod
    def from_settings(cls, settings: Settings) -> Defaults:
        """The defaults ``settings`` configure."""
        return cls(
            system_prompt=settings.local_system_prompt,
            temperature=settings.local_temperature,
            top_p=settings.local_top_p,
            repeat_penalty=settings.local_repeat_penalty,
            loop_guard=settings.local_loop_guard,
        )

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``messages`` (llama-cpp-python's), with the system prompt first when none of them
        is a system one."""
        if not self.system_prompt or any(m.get("role") == "system" for m in messages):
            return messages
        return [{"role": "system", "content": self.system_prompt}, *messages]

    def sampling(self, options: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        """llama-cpp-python's sampling keywords: ``options`` (what the request set, OpenAI
        names) completed with the defaults, and ``repeat_penalty`` from ``params`` if numeric.
        """
        sampled = dict(options)
        if sampled.get("temperature") == 0:
            sampled["temperature"] = self.temperature
            sampled.setdefault("seed", ZERO_TEMPERATURE_SEED)
        sampled.setdefault("temperature", self.temperature)
        sampled.setdefault("top_p", self.top_p)
        penalty = params.get("repeat_penalty")
        valid = isinstance(penalty, (int, float)) and not isinstance(penalty, bool)
        sampled["repeat_penalty"] = penalty if valid and penalty > 0 else self.repeat_penalty
        return sampled


def loop_start(tokens: Sequence[int]) -> int | None:
    """Where the repetition that ``tokens`` ends with starts (the index of its second copy),
    or ``None`` when their tail is not a loop.

    A loop is an exact repetition of 1 to :data:`MAX_PERIOD` tokens, three or more times
    and over at least :data:`MIN_REPEATED_TOKENS` tokens, or a last :data:`WINDOW` tokens
    with at most :data:`MAX_DISTINCT` different ones (index: the window's start).
    """
    count = len(tokens)
    for period in range(1, min(MAX_PERIOD, count // 3) + 1):
        index = count - 1
        while index >= period and tokens[index] == tokens[index - period]:
            index -= 1
        span = count - 1 - index + period  # tokens of the periodic tail
        if span >= 3 * period and span >= MIN_REPEATED_TOKENS:
            return count - span + period
    if count >= WINDOW and len(set(tokens[-WINDOW:])) <= MAX_DISTINCT:
        return count - WINDOW
    return None


class LoopGuard:
    """A llama-cpp-python logits processor that ends the answer once it loops.

    llama-cpp-python calls it before sampling each token with the tokens so far (prompt
    first; the first call sees the prompt alone) and the scores indexed by token id. Once the
    answer's tail loops (:func:`loop_start`), it leaves ``eos`` the only possible token, so
    the generation ends there; ``kept`` is then the answer's tokens before the repetition.

    :param eos: the model's end-of-generation token id.
    """

    def __init__(self, eos: int) -> None:
        self.eos = eos
        self._start: int | None = None
        self.kept: list[int] | None = None

    @property
    def fired(self) -> bool:
        """Whether the answer was stopped for looping."""
        return self.kept is not None

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        """``scores`` (a NumPy array), left as they are or allowing only ``eos``."""
        if self.kept is None:
            if self._start is None:
                self._start = len(input_ids)
            # Only the tail can hold a loop that has just begun: the cost per token stays flat.
            tail_start = max(self._start, len(input_ids) - TAIL)
            cut = loop_start([int(token) for token in input_ids[tail_start:]])
            if cut is not None:
                self.kept = [int(token) for token in input_ids[self._start : tail_start + cut]]
        if self.kept is not None:
            scores.fill(float("-inf"))
            scores[self.eos] = 0.0
        return scores
