"""``logprobs`` / ``top_logprobs`` on the embedded model, in OpenAI's shape.

openai-python talks to a real gunicorn server whose embedded model answers (no key); the
values are checked against llama-cpp-python's own ``logits_all`` implementation on the same
GGUF file. Sampled answers differ from run to run, so the checks are what always holds:
entries are log-probabilities (≤ 0), the alternatives are sorted and as many as asked, and the
entries' bytes write the content exactly; with a near-zero temperature (no repeat penalty)
the chosen token is the most probable one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.test_clients import LOCAL_ID, WEATHER_TOOL, _server, sdk

PROMPT = [{"role": "user", "content": "Write one sentence about cats."}]


@pytest.fixture(scope="module")
def keyless(tmp_path_factory) -> Iterator[Any]:
    """A keyless install: the embedded model answers."""
    yield from _server(tmp_path_factory.mktemp("logprobs"), "logprobs")


def ask(server: Any, **fields: Any) -> Any:
    return sdk(server).chat.completions.create(
        model=LOCAL_ID, messages=PROMPT, **{"max_tokens": 12, **fields}
    )


def check_entries(entries: list[Any], content: str, top: int) -> None:
    """What holds for any sampled answer: the entries write ``content``, every value is a
    log-probability and the ``top`` alternatives are sorted, most probable first."""
    assert b"".join(bytes(entry.bytes) for entry in entries).decode() == content
    written = [bytes(entry.bytes).decode("utf-8", "backslashreplace") for entry in entries]
    assert [entry.token for entry in entries] == written
    # A character split over two tokens is written with escapes in each token.
    if all(bytes(entry.bytes) == entry.token.encode() for entry in entries):
        assert "".join(written) == content
    for entry in entries:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == top
        values = [alternative.logprob for alternative in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        # The chosen token is among the alternatives exactly when it is at least as likely
        # as the last of them.
        if top and entry.logprob > values[-1]:
            assert entry.token in [alternative.token for alternative in entry.top_logprobs]


def test_logprobs_and_top_logprobs_of_a_whole_answer(keyless):
    choice = ask(keyless, logprobs=True, top_logprobs=3).choices[0]
    entries = choice.logprobs.content
    assert entries and choice.logprobs.refusal is None
    check_entries(entries, choice.message.content, 3)


def test_logprobs_without_top_logprobs_give_none_of_them(keyless):
    choice = ask(keyless, logprobs=True).choices[0]
    check_entries(choice.logprobs.content, choice.message.content, 0)


def test_no_logprobs_unless_asked(keyless):
    assert ask(keyless).choices[0].logprobs is None
    assert ask(keyless, logprobs=False).choices[0].logprobs is None


def test_streamed_chunks_carry_the_entries_of_their_own_tokens(keyless):
    chunks = list(ask(keyless, logprobs=True, top_logprobs=3, stream=True))
    texts = []
    for chunk in chunks:
        choice = chunk.choices[0]
        text = choice.delta.content
        if not text:
            assert choice.logprobs is None  # the role chunk and the finish chunk
            continue
        check_entries(choice.logprobs.content, text, 3)
        texts.append(text)
    assert texts and chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_near_greedy_answers_choose_the_first_alternative(keyless):
    # The embedded model's repeat penalty (a default) would reorder the model's distribution.
    choice = ask(
        keyless,
        logprobs=True,
        top_logprobs=2,
        temperature=0.01,
        seed=1,
        extra_body={"repeat_penalty": 1.0},
    ).choices[0]
    check_entries(choice.logprobs.content, choice.message.content, 2)
    for entry in choice.logprobs.content:
        best = entry.top_logprobs[0]
        assert (entry.token, entry.logprob) == (best.token, best.logprob)


def test_n_choices_have_their_own_logprobs(keyless):
    answer = ask(keyless, logprobs=True, top_logprobs=1, n=2, temperature=1.0)
    assert [choice.index for choice in answer.choices] == [0, 1]
    for choice in answer.choices:
        check_entries(choice.logprobs.content, choice.message.content, 1)


def test_json_output_with_logprobs(keyless):
    choice = ask(
        keyless,
        logprobs=True,
        top_logprobs=2,
        response_format={"type": "json_object"},
        max_tokens=40,
        temperature=0,
    ).choices[0]
    # The grammar picks the tokens; the values stay the model's own distribution.
    check_entries(choice.logprobs.content, choice.message.content, 2)
    if choice.finish_reason == "stop":
        json.loads(choice.message.content)


def test_top_logprobs_need_logprobs(keyless):
    for fields in ({"top_logprobs": 2}, {"top_logprobs": 2, "logprobs": False}):
        with pytest.raises(openai.BadRequestError) as caught:
            ask(keyless, **fields)
        assert (caught.value.code, caught.value.param) == ("requires_field", "top_logprobs")
        assert "logprobs" in caught.value.message


def test_logprobs_of_tool_calls_are_refused(keyless):
    with pytest.raises(openai.BadRequestError) as caught:
        ask(keyless, logprobs=True, tools=[WEATHER_TOOL], tool_choice="required")
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "logprobs")


def test_values_match_llama_cpp_python_with_logits_all():
    """The same greedy and sampled completions, and the same values, as llama-cpp-python's
    own implementation, which keeps every position's logits (``logits_all``)."""
    from llama_cpp import Llama, LogitsProcessorList

    from chatservice.backends.local import bundled_model_path
    from chatservice.backends.logprobs import ObservedLlama, TokenLogprobs

    path = bundled_model_path()
    # A small context: logits_all keeps n_ctx x vocabulary floats (48 MB here).
    reference = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False)
    observed = ObservedLlama(model_path=path, n_ctx=256, verbose=False)
    for sampling in ({"temperature": 0.0}, {"temperature": 1.0, "seed": 5, "top_p": 1.0}):
        args = {"prompt": "The capital of France is", "max_tokens": 16, **sampling}
        expected = reference.create_completion(logprobs=3, **args)["choices"][0]
        recorder = TokenLogprobs(observed, 3)
        processors = LogitsProcessorList([recorder])
        text = observed.create_completion(logits_processor=processors, **args)["choices"][0]
        assert text["text"] == expected["text"]
        entries = recorder.take(text["text"])
        logprobs = expected["logprobs"]
        assert [entry["token"] for entry in entries] == logprobs["tokens"]
        assert [entry["logprob"] for entry in entries] == pytest.approx(
            logprobs["token_logprobs"], abs=1e-5
        )
        for entry, top in zip(entries, logprobs["top_logprobs"], strict=True):
            alternatives = {alt["token"]: alt["logprob"] for alt in entry["top_logprobs"]}
            # llama-cpp-python adds the chosen token to its top dictionary.
            assert alternatives == pytest.approx({k: top[k] for k in alternatives}, abs=1e-5)


@pytest.mark.parametrize("stream", [False, True])
def test_a_token_cut_by_a_stop_string_is_given_whole(keyless, stream):
    # "a" ends the answer inside a word: " cat" is written " c" and given whole.
    answer = ask(keyless, logprobs=True, stop=["a"], temperature=0.01, seed=3, stream=stream)
    if stream:
        chunks = [chunk.choices[0] for chunk in answer]
        finish = chunks[-1].finish_reason
        chunks = [choice for choice in chunks if choice.delta.content]
        content = "".join(choice.delta.content for choice in chunks)
        entries = [entry for choice in chunks for entry in choice.logprobs.content]
    else:
        finish = answer.choices[0].finish_reason
        content = answer.choices[0].message.content
        entries = answer.choices[0].logprobs.content
    assert finish == "stop" and "a" not in content
    written = b"".join(bytes(entry.bytes) for entry in entries)
    assert written.startswith(content.encode())
    # Every entry starts within the content: at most the last one reaches past it.
    assert not entries or len(written) - len(entries[-1].bytes) < len(content.encode())
