"""The embedded model's defaults and loop guard, on the real model (small max_tokens)."""

from __future__ import annotations

import pytest

from bench.quality import looping
from chatservice.backends.local import bundled_model_path
from chatservice.backends.localtuning import loop_start
from chatservice.settings import LOCAL_SYSTEM_PROMPT
from tests.conftest import settings_from
from tests.test_upstream_errors import events

QUESTION = "What is the capital of France?"
#: Greedy decoding, no repeat penalty, no system prompt: how this question made the model
#: answer "... la Femme, la Femme, la Femme, ..." until max_tokens.
GREEDY = {"LOCAL_TEMPERATURE": "0", "LOCAL_REPEAT_PENALTY": "1", "LOCAL_SYSTEM_PROMPT": ""}
MAX_TOKENS = 48


def client_with(**env: str):
    from chatservice import create_app

    base = {"UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1", "STORE_URL": "memory://"}
    return create_app(settings_from({**base, "BACKEND": "local", **env})).test_client()


def ask(client, **body):
    r = client.post("/api", json={"user_content": QUESTION, **body})
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


@pytest.fixture(scope="module")
def tokenize():
    from llama_cpp import Llama

    vocab = Llama(model_path=bundled_model_path(), vocab_only=True, verbose=False)
    return lambda text: vocab.tokenize(text.encode("utf-8"), add_bos=False)


def test_a_looping_answer_is_ended_by_the_guard(tokenize):
    unguarded = ask(client_with(**GREEDY, LOCAL_LOOP_GUARD="0"), max_tokens=MAX_TOKENS)
    text = unguarded["response"]
    assert unguarded["usage"]["completion_tokens"] == MAX_TOKENS
    assert looping(text), text
    # The guard's detector sees the loop in the model's own tokens.
    assert loop_start(tokenize(text)) is not None

    guarded_client = client_with(**GREEDY)
    guarded = ask(guarded_client, max_tokens=MAX_TOKENS)
    assert guarded["finish_reason"] == "length"
    assert guarded["usage"]["completion_tokens"] < MAX_TOKENS
    # Greedy: the same answer, cut before its first repetition.
    assert guarded["response"].strip() and text.startswith(guarded["response"])
    assert not looping(guarded["response"]), guarded["response"]
    assert loop_start(tokenize(guarded["response"])) is None

    streamed = events(
        guarded_client.post(
            "/api", json={"user_content": QUESTION, "max_tokens": MAX_TOKENS, "stream": True}
        )
    )
    assert streamed[-1] == "[DONE]"
    assert streamed[-2]["data"]["finish_reason"] == "length"
    streamed_text = "".join(e["data"]["response"] for e in streamed[:-1])
    assert text.startswith(streamed_text) and len(streamed_text) < len(text)


def test_the_system_prompt_is_sent_only_when_the_request_has_none():
    client = client_with()

    def prompt_tokens(client, **body):
        return ask(client, max_tokens=1, **body)["usage"]["prompt_tokens"]

    bare = prompt_tokens(client)
    assert prompt_tokens(client, system_content=LOCAL_SYSTEM_PROMPT) == bare
    assert prompt_tokens(client, system_content="Be terse.") < bare
    # Empty turns it off: the model's own chat template then has its say.
    assert prompt_tokens(client_with(LOCAL_SYSTEM_PROMPT="")) != bare
    custom = "Answer in French, in one word, and never explain anything at all."
    assert prompt_tokens(client_with(LOCAL_SYSTEM_PROMPT=custom)) == prompt_tokens(
        client, system_content=custom
    )


def test_temperature_zero_is_the_default_sampling_with_a_fixed_seed():
    client = client_with()
    body = {"messages": [{"role": "user", "content": QUESTION}], "max_tokens": 12}

    def answer(**fields):
        r = client.post("/api/v1/chat/completions", json={**body, **fields})
        assert r.status_code == 200, r.get_json()
        return r.get_json()["choices"][0]["message"]["content"]

    zero = answer(temperature=0)
    assert zero.strip() and answer(temperature=0) == zero  # repeatable
    assert answer(temperature=0.2, seed=0) == zero  # LOCAL_TEMPERATURE, seed 0
    # With the defaults changed, temperature 0 follows them.
    other = client_with(LOCAL_TEMPERATURE="1.5", LOCAL_TOP_P="1")
    r = other.post("/api/v1/chat/completions", json={**body, "temperature": 0})
    hot = other.post("/api/v1/chat/completions", json={**body, "temperature": 1.5, "seed": 0})
    assert r.get_json()["choices"][0] == hot.get_json()["choices"][0]


def test_a_seed_gives_the_same_answer_whatever_was_asked_before():
    # llama.cpp rounds one token's logits otherwise than a batch's: a prompt asked first, after
    # another one, or again right after itself was evaluated three ways, and at a high
    # temperature the same seed gave two different answers (see backends/repeatable.py).
    sampling = {"LOCAL_TEMPERATURE": "1.5", "LOCAL_TOP_P": "1"}
    client = client_with(**sampling)

    def answer(client, messages, seed):
        body = {"messages": messages, "max_tokens": 12, "seed": seed}
        r = client.post("/api/v1/chat/completions", json=body)
        assert r.status_code == 200, r.get_json()
        return r.get_json()["choices"][0]["message"]["content"]

    question = [{"role": "user", "content": QUESTION}]
    seeds = range(4)
    first = [answer(client, question, seed) for seed in seeds]  # the first after the load
    again = [answer(client, question, seed) for seed in seeds]  # right after the same prompt
    after_another = []
    for seed in seeds:
        answer(client, [{"role": "user", "content": "Name a big river."}], seed)
        after_another.append(answer(client, question, seed))
    assert first == again == after_another
    assert len(set(first)) > 1  # the seeds do choose: the answers are sampled

    # A conversation's next turn, right after its last answer was generated (one token at a
    # time), and on a model that has evaluated nothing yet.
    turn = [*question, {"role": "assistant", "content": first[-1]}]
    turn.append({"role": "user", "content": "And of Italy?"})
    next_turn = answer(client, turn, seeds[-1])
    assert answer(client_with(**sampling), turn, seeds[-1]) == next_turn


@pytest.mark.parametrize(
    ("tokens", "start"),
    [
        ([1, 2, 3, 4] + [7, 8, 9, 10] * 3, 8),  # four tokens, three times: loops from the 2nd
        ([5] * 12, 1),
        ([1, 2, 3] + [9] * 11, None),  # too short a run
        (list(range(60)) + list(range(60))[:12], None),  # one repeat is not a loop
        ([i % 10 for i in range(64)], 10),  # 0..9 over and over
    ],
)
def test_loop_detector(tokens, start):
    assert loop_start(tokens) == start
