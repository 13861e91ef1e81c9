"""Token-aware trimming of long histories on every face that keeps one: the upstream gets a
prompt that fits the context window, with the system prompt and the newest turn intact; a
newest turn that cannot fit is a localized 400 before any upstream call.
"""

from __future__ import annotations

import pytest

from chatservice.tokens import TokenCounter
from tests.test_conversations import created, post, text_of
from tests.test_i18n import CATALOGS

KEY = "sk-test-configured-0001"
#: A long turn: 120 tokens of cl100k_base (" word" is one token).
LONG = "word" + " word" * 119
WINDOW = 600


def counted(messages: list[dict]) -> int:
    return TokenCounter(lambda text: 0).count_messages("gpt-3.5-turbo", messages)


def history(turns: int) -> list[dict]:
    messages = []
    for index in range(turns):
        messages.append({"role": "user", "content": f"q{index} {LONG}"})
        messages.append({"role": "assistant", "content": f"a{index} {LONG}"})
    return messages


def assert_fits(sent: dict, max_tokens: int) -> None:
    assert counted(sent["messages"]) + max_tokens <= WINDOW


def test_platform_face_continuous_history_is_trimmed(make_app, fake):
    client = make_app(API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}").test_client()
    earlier = history(10)
    body = {
        "user_content": "newest question",
        "system_content": "You are terse.",
        "continuous": earlier,
        "max_tokens": 100,
    }
    response = client.post("/api", json=body)
    assert response.status_code == 200, response.get_json()
    sent = fake.received[-1].json
    assert_fits(sent, 100)
    messages = sent["messages"]
    assert messages[0] == {"role": "system", "content": "You are terse."}
    assert messages[-1] == {"role": "user", "content": "newest question"}
    kept = messages[1:-1]
    assert 0 < len(kept) < len(earlier)
    assert kept == earlier[len(earlier) - len(kept) :]  # the newest turns, whole
    # The client's own result still shows what it sent.
    assert len(response.get_json()["result"]) == len(earlier) + 3


def test_a_newest_turn_that_cannot_fit_is_refused_before_any_upstream_call(make_app, fake):
    client = make_app(API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}").test_client()
    body = {"user_content": LONG * 6, "continuous": history(2), "lang": "zh_CN"}
    response = client.post("/api", json=body)
    assert response.status_code == 400
    data = response.get_json()["data"]
    assert data["error"] == "context_length_exceeded"
    template = CATALOGS["zh_CN"]["context_length_exceeded"]
    assert data["response"].startswith(template.split("{limit}")[0] + "600")
    assert fake.received == []


def test_short_histories_and_unknown_models_go_as_they_are(make_app, fake):
    client = make_app(API_KEY=KEY).test_client()
    earlier = history(10)
    body = {"user_content": "q", "continuous": earlier, "model": "my-own-model"}
    assert client.post("/api", json=body).status_code == 200
    assert fake.received[-1].json["messages"][:-1] == earlier  # no window known: no trimming
    body["model"] = "gpt-3.5-turbo"  # 16k tokens: 2.4k fit
    assert client.post("/api", json=body).status_code == 200
    assert fake.received[-1].json["messages"][:-1] == earlier


def test_chat_room_history_is_trimmed_but_kept(make_app, fake):
    client = make_app(
        API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}", CHAT_MAXTOKENS="50"
    ).test_client()
    headers = {"X-Room-Id": "long-room"}
    for index in range(6):
        body = {"content": f"turn{index} {LONG}"}
        response = client.post("/api/chat-room", json=body, headers=headers)
        assert response.status_code == 200, response.get_json()
    sent = fake.received[-1].json
    assert_fits(sent, 50)
    messages = sent["messages"]
    assert messages[0] == {"role": "system", "content": "You are a helpful assistant."}
    assert messages[-1] == {"role": "user", "content": f"turn5 {LONG}"}
    assert len(messages) < 12
    # The streamed face trims the same way.
    response = client.post("/api/chat-room/stream", json={"content": "last"}, headers=headers)
    assert response.status_code == 200
    assert_fits(fake.received[-1].json, 50)
    assert fake.received[-1].json["messages"][-1] == {"role": "user", "content": "last"}


def test_conversation_turns_are_trimmed(make_app, fake):
    client = make_app(API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}").test_client()
    conv = created(post(client, "createTurbo", "Be brief."))
    for index in range(6):
        assert text_of(post(client, "chat", f"q{index} {LONG}", conv)).startswith("echo:")
    sent = fake.received[-1].json
    assert_fits(sent, 0)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent["messages"][-1] == {"role": "user", "content": f"q5 {LONG}"}
    assert len(sent["messages"]) < 12
    # Every turn is still in the conversation.
    assert len(post(client, "contextArray", conv=conv).get_json()) == 12


def test_transcript_conversations_are_trimmed(make_app, fake):
    client = make_app(
        API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo-instruct={WINDOW + 256}"
    ).test_client()
    conv = created(post(client, "create", "Talk."))
    for index in range(6):
        assert text_of(post(client, "chat", f"q{index} {LONG}", conv)).startswith("echo:")
    prompt = fake.received[-1].json["prompt"]
    counter = TokenCounter(lambda text: 0)
    assert counter.count("gpt-3.5-turbo-instruct", prompt) + 256 <= WINDOW + 256
    assert prompt.startswith("Talk.\n\n")
    assert prompt.endswith(f"Human: q5 {LONG}\nAI:")
    assert "Human: q0 " not in prompt


def test_too_long_conversation_question_is_refused(make_app, fake):
    client = make_app(API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}").test_client()
    conv = created(post(client, "createTurbo"))
    response = post(client, "chat", LONG * 6, conv)
    assert response.status_code == 400
    assert fake.received == []


@pytest.mark.parametrize("trim", ["0", "1"])
def test_openai_face_trims_only_when_asked(make_app, fake, trim):
    client = make_app(
        API_KEY=KEY, CONTEXT_WINDOWS=f"gpt-3.5-turbo={WINDOW}", TRIM_OPENAI_FACE=trim
    ).test_client()
    messages = [{"role": "system", "content": "S"}, *history(10), {"role": "user", "content": "q"}]
    body = {"model": "gpt-3.5-turbo", "messages": messages, "max_tokens": 20}
    response = client.post("/api/v1/chat/completions", json=body)
    assert response.status_code == 200
    sent = fake.received[-1].json["messages"]
    if trim == "0":
        assert sent == messages
    else:
        assert sent[0] == messages[0] and sent[-1] == messages[-1]
        assert counted(sent) + 20 <= WINDOW


def test_the_embedded_model_is_trimmed_to_its_own_window(make_app):
    # LOCAL_CONTEXT_TOKENS=256 and SmolLM2's own tokenizer: the history must go, not the turn.
    client = make_app(BACKEND="local", LOCAL_CONTEXT_TOKENS="256").test_client()
    body = {"user_content": "Say hi", "continuous": history(4), "max_tokens": 4}
    response = client.post("/api", json=body)
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["response"] is not None


def test_max_tokens_beyond_the_window_keeps_half_of_it_for_the_answer(make_app):
    # Seed 002's client script asks for 3000 tokens; the embedded model's window is 2048 and
    # llama.cpp clips the answer to what is left.
    client = make_app(BACKEND="local").test_client()
    body = {"user_content": "Name a color.", "max_tokens": 3000, "continuous": history(8)}
    response = client.post("/api", json={**body, "stream": True}, buffered=False)
    assert response.status_code == 200
    response.close()  # the first event is enough: the request was not refused
