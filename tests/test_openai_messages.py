"""OpenAI's message shapes and ranges on the OpenAI face, the embedded model's OpenAI features,
and CLIENT_KEYS: through Flask's test client, the fake upstream and the real embedded model.
"""

from __future__ import annotations

import json
import re

import pytest

from chatservice.settings import DEFAULT_UPSTREAM
from tests.conftest import settings_from
from tests.test_upstream_errors import events

LOCAL_ID = "smollm2-135m-instruct"
PATH = "/api/v1/chat/completions"
HI = [{"role": "user", "content": "Say hi"}]
CALL = {"id": "call_1", "type": "function", "function": {"name": "w", "arguments": "{}"}}
TOOL = {"type": "function", "function": {"name": "w", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def local():
    """An app with no key and OpenAI's API as upstream: the embedded model answers."""
    from chatservice import create_app

    app = create_app(settings_from({"STORE_URL": "memory://"}))
    return app.test_client()


def ask(client, **body):
    return client.post(PATH, json={"model": LOCAL_ID, "messages": HI, "max_tokens": 6, **body})


# --- messages and fields, whatever the backend ----------------------------------------------

ACCEPTED = [
    [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
    [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ],
    [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://x/y"}}]},
    ],
]


@pytest.mark.parametrize("messages", ACCEPTED)
def test_openai_message_shapes_reach_the_upstream_unchanged(client, fake, messages):
    r = client.post(PATH, json={"model": "gpt-4o", "messages": messages})
    assert r.status_code == 200, r.get_json()
    assert fake.received[-1].json["messages"] == messages


REFUSED = [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "invalid_chat_role", "messages[0].role"),
    ({"messages": [{"role": "user"}]}, "missing_field", "messages[0].content"),
    ({"messages": [{"role": "user", "content": 5}]}, "invalid_content", "messages[0].content"),
    (
        {"messages": [{"role": "assistant", "content": None}]},
        "missing_field",
        "messages[0].content",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "invalid_content_part",
        "messages[0].content[0]",
    ),
    (
        {"messages": [{"role": "system", "content": [{"type": "image_url", "image_url": {}}]}]},
        "invalid_content_part",
        "messages[0].content[0]",
    ),
    (
        {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": 1}]}]},
        "invalid_tool_calls",
        "messages[0].tool_calls[0]",
    ),
    ({"messages": [{"role": "tool", "content": "x"}]}, "missing_field", "messages[0].tool_call_id"),
    ({"temperature": 5}, "out_of_range", "temperature"),
    ({"top_p": "x"}, "not_a_number", "top_p"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "invalid_stop", "stop"),
    ({"n": 0}, "out_of_range", "n"),
    ({"n": 129}, "out_of_range", "n"),
    ({"presence_penalty": -3}, "out_of_range", "presence_penalty"),
    ({"logprobs": "yes"}, "not_a_boolean", "logprobs"),
    ({"top_logprobs": 21}, "out_of_range", "top_logprobs"),
    ({"top_logprobs": 2}, "requires_field", "top_logprobs"),
    ({"top_logprobs": 0, "logprobs": False}, "requires_field", "top_logprobs"),
    ({"seed": 1.5}, "not_an_integer", "seed"),
    ({"user": 5}, "not_a_string", "user"),
    ({"stream_options": []}, "not_an_object", "stream_options"),
    ({"response_format": {"type": "xml"}}, "invalid_choice", "response_format.type"),
    (
        {"response_format": {"type": "json_schema"}},
        "not_an_object",
        "response_format.json_schema",
    ),
    ({"tools": [{"type": "function"}]}, "invalid_tool", "tools[0]"),
    ({"tool_choice": "always"}, "invalid_tool_choice", "tool_choice"),
    (
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "x"}}},
        "unknown_tool",
        "tool_choice",
    ),
]


@pytest.mark.parametrize(("fields", "code", "param"), REFUSED)
def test_malformed_messages_and_fields_are_a_400_naming_the_field(
    client, fake, fields, code, param
):
    r = client.post(PATH, json={"model": "gpt-4o", "messages": HI, **fields})
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert error["message"] and "Traceback" not in r.get_data(as_text=True)
    assert fake.received == []  # OpenAI's ranges apply before any backend


@pytest.mark.parametrize(
    ("logprobs", "code"), [(3, None), (0, None), (6, "out_of_range"), (True, "not_an_integer")]
)
def test_legacy_completions_take_logprobs_as_an_integer(client, fake, logprobs, code):
    # OpenAI's legacy completions API: logprobs is how many alternatives per token, 0..5.
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "logprobs": logprobs}
    r = client.post("/api/v1/completions", json=body)
    if code is None:
        assert r.status_code == 200, r.get_json()
        assert fake.received[-1].json["logprobs"] == logprobs
    else:
        assert r.status_code == 400
        assert (r.get_json()["error"]["code"], r.get_json()["error"]["param"]) == (code, "logprobs")
        assert fake.received == []


# --- the embedded model ---------------------------------------------------------------------


def test_embedded_model_reads_content_parts_tool_turns_and_developer(local):
    for messages in ACCEPTED[:3]:
        r = local.post(PATH, json={"model": LOCAL_ID, "messages": messages, "max_tokens": 4})
        assert r.status_code == 200, r.get_json()
        assert r.get_json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"logprobs": True, "tools": [TOOL], "tool_choice": "required"}, "logprobs"),
        ({"logit_bias": {"50256": -100}}, "logit_bias"),
        ({"frobnicate": 1}, "frobnicate"),
        ({"messages": ACCEPTED[3]}, "messages[0].content[0]"),
        ({"tools": [TOOL], "stream": True}, "tool_choice"),
        ({"tools": [TOOL, TOOL], "tool_choice": "required"}, "tool_choice"),
    ],
)
def test_embedded_model_refuses_what_it_cannot_do(local, fields, param):
    r = ask(local, **fields)
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", param)
    assert LOCAL_ID in error["message"]


@pytest.mark.parametrize("logprobs", [0, 2])
def test_embedded_model_refuses_the_legacy_completions_logprobs(local, logprobs):
    body = {"model": LOCAL_ID, "prompt": "hi", "max_tokens": 2, "logprobs": logprobs}
    r = local.post("/api/v1/completions", json=body)
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert (error["code"], error["param"]) == ("unsupported_parameter", "logprobs")


def test_embedded_model_answers_n_choices(local):
    body = ask(local, n=2, temperature=1.0).get_json()
    assert [choice["index"] for choice in body["choices"]] == [0, 1]
    assert all(choice["message"]["content"] for choice in body["choices"])
    # Two choices of at most max_tokens each; llama-cpp-python finishes a character whose
    # UTF-8 bytes span several tokens before it stops (at most 3 more tokens, for 4 bytes).
    assert body["usage"]["completion_tokens"] <= 2 * (6 + 3)


def test_embedded_model_seed_makes_sampling_repeatable(local):
    texts = {
        ask(local, seed=7, temperature=1.5).get_json()["choices"][0]["message"]["content"]
        for _ in range(2)
    }
    assert len(texts) == 1


def test_embedded_model_json_schema_output_is_valid_json(local):
    schema = {
        "type": "object",
        "properties": {"ok": {"type": "boolean"}},
        "required": ["ok"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "Answer", "schema": schema}}
    body = ask(local, response_format=fmt, max_tokens=20, temperature=0).get_json()
    assert isinstance(json.loads(body["choices"][0]["message"]["content"])["ok"], bool)
    body = ask(local, response_format={"type": "json_object"}, max_tokens=1).get_json()
    assert body["choices"][0]["message"]["content"].startswith(("{", "["))


def test_embedded_model_stream_ends_with_the_usage_chunk(local):
    got = events(ask(local, stream=True, stream_options={"include_usage": True}))
    assert got[-1] == "[DONE]"
    last = got[-2]
    assert last["choices"] == [] and last["id"] == got[0]["id"]
    generated = sum(1 for e in got[:-2] if e["choices"][0]["delta"].get("content"))
    assert 0 < generated <= last["usage"]["completion_tokens"] <= 6
    assert last["usage"]["prompt_tokens"] > 0
    plain = events(ask(local, stream=True))
    assert all(e == "[DONE]" or e["choices"] for e in plain)  # no usage chunk unasked


def test_context_overflow_uses_openai_wording(make_app):
    client = make_app(BACKEND="local", LOCAL_CONTEXT_TOKENS="128").test_client()
    r = client.post(PATH, json={"messages": [{"role": "user", "content": "word " * 400}]})
    assert r.status_code == 400
    error = r.get_json()["error"]
    assert error["code"] == "context_length_exceeded"
    # OpenAI's wording, which LiteLLM matches to fall back on a larger model; llama.cpp
    # rounds the context up (128 becomes 256).
    found = re.fullmatch(
        r"This model's maximum context length is (\d+) tokens\. However, your messages "
        r"resulted in (\d+) tokens\. Please reduce the length of the messages\.",
        error["message"],
    )
    assert found and 128 <= int(found[1]) < int(found[2])


def test_wrapper_faces_send_the_embedded_model_a_chat_not_a_transcript(local):
    # Its id contains "instruct", which names completion models upstream; as a transcript
    # prompt ("Human: ...\nAI:") it wrote the next turns of the transcript.
    seed = local.post(
        "/api/v1/chat", json={"query": "Say hi", "model": LOCAL_ID, "max_tokens": 8}
    ).get_json()["data"]
    # The same chat on the OpenAI face is the same prompt, token for token (the answers may
    # differ: temperature 0 samples with a fixed seed, and llama.cpp's reused prompt cache
    # changes the last digits of the scores).
    chat = ask(local, max_tokens=8, temperature=0, top_p=1).get_json()
    assert seed["usage"]["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    assert "AI:" not in seed["response"] and "Human:" not in seed["response"]
    api = local.post("/api", json={"user_content": "Say hi", "model": LOCAL_ID, "max_tokens": 12})
    assert "AI:" not in api.get_json()["current_response"]


# --- CLIENT_KEYS ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "accepts"),
    [
        ({}, False),
        ({"UPSTREAM_BASE_URL": DEFAULT_UPSTREAM + "/"}, False),
        ({"UPSTREAM_BASE_URL": "http://127.0.0.1:11434/v1"}, True),
        ({"API_KEY": "sk-configured"}, True),
        ({"CLIENT_KEYS": "on"}, True),
        ({"CLIENT_KEYS": "off", "UPSTREAM_BASE_URL": "http://127.0.0.1:4000/v1"}, False),
    ],
)
def test_client_keys_default_to_on_only_with_a_chosen_upstream_or_key(env, accepts):
    assert settings_from(env).accepts_client_keys is accepts


def test_client_keys_off_sends_the_configured_key_not_the_clients(make_app, fake):
    client = make_app(API_KEY="sk-configured-0001", CLIENT_KEYS="off").test_client()
    headers = {"Authorization": "Bearer sk-from-client"}
    r = client.post(PATH, json={"model": "gpt-4o", "messages": HI}, headers=headers)
    assert r.status_code == 200
    assert fake.received[-1].headers["Authorization"] == "Bearer sk-configured-0001"
    r = client.post("/api", json={"user_content": "hi", "api_key": "sk-from-client"})
    assert r.status_code == 200
    assert fake.received[-1].headers["Authorization"] == "Bearer sk-configured-0001"
