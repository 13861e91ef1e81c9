"""Both faces against the fake upstream: shapes, history building, parameter mapping."""

from __future__ import annotations

import pytest

from tests.fakeupstream import Reply

# --- POST /api (the Docker ChatGPT API platform) -------------------------------------------------


def test_api_success_shape(client, fake):
    r = client.post("/api", json={"user_content": "What is the capital of France?"})
    assert r.status_code == 200
    body = r.get_json()
    answer = "echo: What is the capital of France?"
    assert body["code"] == 200 and body["msg"] == "success"
    assert body["data"]["response"] == answer
    assert body["current_response"] == answer
    assert body["result"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": answer},
    ]
    sent = fake.received[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.json["model"] == "gpt-3.5-turbo"
    assert sent.json["max_tokens"] == 100
    assert "stream" not in sent.json


@pytest.mark.parametrize("system_field", ["system_content", "sys_content"])
@pytest.mark.parametrize("history_field", ["continuous_dialogue", "continuous"])
def test_api_history_building(client, fake, system_field, history_field):
    history = [
        {"role": "system", "content": "old system"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    ]
    r = client.post(
        "/api",
        json={
            "user_content": "q2",
            system_field: "be brief",
            history_field: history,
            "model": "gpt-4o-mini",
            "max_tokens": 3000,
        },
    )
    assert r.status_code == 200
    sent = fake.received[0].json
    assert sent["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert sent["model"] == "gpt-4o-mini" and sent["max_tokens"] == 3000
    assert r.get_json()["result"] == [
        *sent["messages"],
        {"role": "assistant", "content": "echo: q2"},
    ]


def test_api_history_keeps_leading_system_without_system_content(client, fake):
    history = [
        {"role": "system", "content": "keep me"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
    ]
    client.post("/api", json={"user_content": "q2", "continuous": history})
    assert fake.received[0].json["messages"][0] == {"role": "system", "content": "keep me"}
    assert len(fake.received[0].json["messages"]) == 4


def test_api_result_fed_back_as_history_does_not_duplicate(client, fake):
    first = client.post("/api", json={"user_content": "q1", "system_content": "sys"}).get_json()
    client.post(
        "/api", json={"user_content": "q2", "system_content": "sys", "continuous": first["result"]}
    )
    assert fake.received[1].json["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "echo: q1"},
        {"role": "user", "content": "q2"},
    ]


def test_api_completion_model_goes_to_completions(client, fake):
    r = client.post("/api", json={"user_content": "hi", "model": "text-davinci-003"})
    assert r.status_code == 200
    sent = fake.received[0]
    assert sent.path == "/v1/completions"
    assert sent.json["prompt"] == "Human: hi\nAI:"
    assert sent.json["stop"] == ["Human:"]
    assert r.get_json()["current_response"] == "echo: Human: hi\nAI:"


# --- POST /api/v1/chat (chatgpt-service) ---------------------------------------------------------


def test_chat_success_shape_with_query(client, fake):
    r = client.post(
        "/api/v1/chat",
        json={"query": "讲个故事", "model": "gpt-3.5-turbo", "openai_parameter": True},
    )
    assert r.status_code == 200
    body = r.get_json()
    assert body["code"] == 0 and body["msg"] == "ok"
    assert body["data"]["response"] == "echo: 讲个故事"
    assert body["data"]["finish_reason"] == "stop"
    assert body["data"]["usage"]["total_tokens"] > 0
    assert fake.received[0].json["messages"] == [{"role": "user", "content": "讲个故事"}]


def test_chat_documented_messages_example(client, fake):
    messages = [
        {"role": "system", "content": "AI只能用中文回复\n这是Human和AI之间的对话"},
        {"role": "user", "content": "你是哪里人？"},
        {"role": "assistant", "content": "我是北京人。"},
        {"role": "user", "content": "讲个故事"},
    ]
    r = client.post(
        "/api/v1/chat",
        json={"messages": messages, "model": "gpt-3.5-turbo", "openai_parameter": True},
    )
    assert r.get_json()["data"]["response"] == "echo: 讲个故事"
    assert fake.received[0].json["messages"] == messages


SAMPLING = {
    "temperature": 0.7,
    "top_p": 0.9,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "stop": ["END", "STOP"],
    "best_of": 3,
}


def test_chat_openai_parameter_true_sends_only_model_input_max_tokens(client, fake):
    client.post(
        "/api/v1/chat", json={"query": "q", "openai_parameter": True, "max_tokens": 42, **SAMPLING}
    )
    sent = fake.received[0].json
    assert set(sent) == {"model", "messages", "max_tokens"}
    assert sent["max_tokens"] == 42


def test_chat_openai_parameter_default_is_true(client, fake):
    client.post("/api/v1/chat", json={"query": "q", **SAMPLING})
    assert set(fake.received[0].json) == {"model", "messages", "max_tokens"}
    assert fake.received[0].json["max_tokens"] == 500


def test_chat_openai_parameter_false_sends_given_parameters(client, fake):
    client.post("/api/v1/chat", json={"query": "q", "openai_parameter": False, **SAMPLING})
    sent = fake.received[0].json
    assert sent["temperature"] == 0.7 and sent["top_p"] == 0.9
    assert sent["frequency_penalty"] == 0.5 and sent["presence_penalty"] == -0.5
    assert sent["stop"] == ["END", "STOP"]
    assert "best_of" not in sent  # chat models have no best_of


def test_chat_openai_parameter_false_fills_documented_defaults(client, fake):
    client.post("/api/v1/chat", json={"query": "q", "openai_parameter": False})
    sent = fake.received[0].json
    assert sent["temperature"] == 0.0 and sent["top_p"] == 1
    assert sent["frequency_penalty"] == 0 and sent["presence_penalty"] == 0
    assert "stop" not in sent


def test_chat_completion_model_with_parameters(client, fake):
    r = client.post(
        "/api/v1/chat",
        json={
            "query": "tell a story",
            "model": "text-davinci-003",
            "openai_parameter": False,
            "best_of": 2,
            "stop": "END",
        },
    )
    assert r.status_code == 200
    sent = fake.received[0]
    assert sent.path == "/v1/completions"
    assert sent.json["prompt"] == "tell a story"
    assert sent.json["best_of"] == 2 and sent.json["stop"] == ["END"]


def test_chat_completion_model_default_stop(client, fake):
    client.post(
        "/api/v1/chat",
        json={"query": "q", "model": "gpt-3.5-turbo-instruct", "openai_parameter": False},
    )
    sent = fake.received[0]
    assert sent.path == "/v1/completions"
    assert sent.json["stop"] == ["Human:"]


def test_chat_completion_model_flattens_messages(client, fake):
    client.post(
        "/api/v1/chat",
        json={
            "model": "davinci-002",
            "messages": [
                {"role": "system", "content": "S"},
                {"role": "user", "content": "U"},
                {"role": "assistant", "content": "A"},
                {"role": "user", "content": "U2"},
            ],
        },
    )
    assert fake.received[0].json["prompt"] == "S\nHuman: U\nAI: A\nHuman: U2\nAI:"


def test_chat_query_appended_to_messages(client, fake):
    client.post(
        "/api/v1/chat",
        json={
            "query": "q2",
            "messages": [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"}],
        },
    )
    assert fake.received[0].json["messages"][-1] == {"role": "user", "content": "q2"}


# --- keys ---------------------------------------------------------------------------------


def test_request_api_key_used_for_that_call_only(make_app, fake):
    client = make_app().test_client()  # no configured key
    client.post("/api", json={"user_content": "a", "api_key": "sk-request-one"})
    client.post("/api", json={"user_content": "b"})  # no key: the embedded model would answer
    assert fake.received[0].headers["Authorization"] == "Bearer sk-request-one"
    assert len(fake.received) == 1


def test_backend_openai_without_key_sends_no_authorization(make_app, fake):
    client = make_app(BACKEND="openai").test_client()
    assert client.post("/api", json={"user_content": "a"}).status_code == 200
    assert "Authorization" not in fake.received[0].headers


def test_request_key_beats_configured_key(client, fake):
    client.post("/api/v1/chat", json={"query": "a"})
    client.post("/api", json={"user_content": "a", "api_key": "sk-mine"})
    assert fake.received[0].headers["Authorization"] == "Bearer sk-test-configured-0001"
    assert fake.received[1].headers["Authorization"] == "Bearer sk-mine"


def test_upstream_401_never_leaks_key_or_text(make_app, fake, caplog):
    client = make_app(API_KEY="sk-secret-configured-key").test_client()
    leaked = "Incorrect API key provided: sk-secr**********-key at http://upstream.internal"
    fake.push(Reply(status=401, body={"error": {"message": leaked, "code": "invalid_api_key"}}))
    # A client address that cannot be mistaken for the upstream's in the access log.
    r = client.post(
        "/api",
        json={"user_content": "a", "api_key": "sk-secret-request-key"},
        environ_base={"REMOTE_ADDR": "192.0.2.7"},
    )
    assert r.status_code == 401
    text = r.get_data(as_text=True)
    for secret in ("sk-secret", "Incorrect API key", "upstream.internal", "127.0.0.1"):
        assert secret not in text
        assert secret not in caplog.text
    assert r.get_json()["data"]["error"] == "upstream_unauthorized"
