"""The conversations face of Alice ChatGPT: presets, turns, store, locks, streams."""

from __future__ import annotations

import dataclasses
import re
import threading

import pytest
import requests

from chatservice import conversations as model
from chatservice.conversations import CHATGPT_PROMPT, DEFAULT_PROMPT
from tests.fakeupstream import Reply
from tests.test_chatroom import sse_events
from tests.test_i18n import CATALOGS

BASE = "/api/chatgpt"
TRANSCRIPT_STOP = ["\nHuman:", "\nAI:"]
HEAD = DEFAULT_PROMPT.rstrip() + "\n\n"


def post(client, name: str, data: str | bytes | None = None, conv: str | None = None, **kwargs):
    headers = dict(kwargs.pop("headers", {}))
    if data is None and "json" not in kwargs:
        data = b""
    if conv is not None:
        headers["conversation"] = conv
    return client.post(f"{BASE}/{name}", data=data, headers=headers, **kwargs)


def text_of(response, status: int = 200) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "text/plain"
    assert response.content_type == "text/plain; charset=utf-8"
    return response.get_data(as_text=True)


def error_text(response) -> str:
    """The error message: plain text, or (until errors.py sends a renderer's ``str`` as
    text/plain) the JSON string the shared handler makes of it.
    """
    if response.mimetype == "application/json":
        body = response.get_json()
        assert isinstance(body, str), body
        return body
    assert response.content_type == "text/plain; charset=utf-8"
    return response.get_data(as_text=True)


def assert_error(response, status: int, key: str, lang: str = "en", **params) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert error_text(response) == CATALOGS[lang][key].format(**params)


def created(response) -> str:
    conv_id = text_of(response)
    assert re.fullmatch(r"[A-Za-z0-9]{16,}", conv_id), conv_id
    return conv_id


def sent(fake, index: int):
    return fake.received[index].json


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": content}


@pytest.fixture
def app(make_app):
    return make_app(API_KEY="sk-conv", UPSTREAM_RETRIES="0")


@pytest.fixture
def client(app):
    return app.test_client()


# --- Alice ChatGPT's documented calls, in order ------------------------------------------------


def test_alice_chatgpts_calls_in_order(client, fake):
    conv = created(post(client, "create"))
    fake.push(Reply(text=" one"), Reply(text=" two\n"), Reply(text=" two again"))
    assert text_of(post(client, "chat", "q1", conv)) == "one"
    assert text_of(post(client, "chat", "q2", conv)) == "two"
    transcript = HEAD + "Human: q1\nAI: one\nHuman: q2\nAI: two"
    assert text_of(post(client, "context", conv=conv)) == transcript
    assert text_of(post(client, "regenerate", conv=conv)) == "two again"
    assert text_of(post(client, "rollback", conv=conv)) == "Rollback Succeeded"
    r = post(client, "contextArray", conv=conv)
    assert r.status_code == 200 and r.get_json() == ["q1", "one"]
    assert text_of(post(client, "store", conv=conv)) == "保存成功"
    r = client.get(f"{BASE}/share/{conv}")  # no headers at all: shares need no auth
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == {"Id": conv, "Prompt": DEFAULT_PROMPT, "SentenceList": ["q1", "one"]}
    assert text_of(post(client, "finish", conv=conv)) == "Conversation finished"
    assert_error(post(client, "chat", "q3", conv), 404, "conversation_not_found")
    # The shared copy outlives the conversation.
    assert client.get(f"{BASE}/share/{conv}").status_code == 200

    # What reached the upstream: the transcript through /completions with Alice ChatGPT's settings.
    assert [r.path for r in fake.received] == ["/v1/completions"] * 3
    first = sent(fake, 0)
    assert first["model"] == "gpt-3.5-turbo-instruct"
    assert first["prompt"] == HEAD + "Human: q1\nAI:"
    assert first["stop"] == TRANSCRIPT_STOP
    assert first["max_tokens"] == 256
    assert (first["temperature"], first["top_p"]) == (0.9, 1)
    assert (first["frequency_penalty"], first["presence_penalty"]) == (0, 0.6)
    assert sent(fake, 1)["prompt"] == HEAD + "Human: q1\nAI: one\nHuman: q2\nAI:"
    # regenerate asks the last question again, without its old answer.
    assert sent(fake, 2)["prompt"] == sent(fake, 1)["prompt"]


def test_ids_are_long_random_and_distinct(client):
    ids = {created(post(client, "create")) for _ in range(20)}
    assert len(ids) == 20
    assert all(len(conv) >= 16 for conv in ids)


# --- presets -------------------------------------------------------------------------------------


def test_friend_chat_preset(client, fake):
    conv = created(post(client, "create", "We are friends.", headers={"settings": "FriendChat"}))
    fake.push(Reply(text=" Hey!"))
    assert text_of(post(client, "chat", "hi", conv)) == "Hey!"
    body = sent(fake, 0)
    assert body["prompt"] == "We are friends.\n\nYou: hi\nFriend:"
    assert body["stop"] == ["\nYou:", "\nFriend:"]
    assert (body["temperature"], body["frequency_penalty"], body["presence_penalty"]) == (
        0.5,
        0.5,
        0,
    )
    assert text_of(post(client, "context", conv=conv)) == "We are friends.\n\nYou: hi\nFriend: Hey!"


def test_role_play_preset(client, fake):
    body = {"human_name": "Knight", "ai_name": "Dragon", "prompt": "A dragon guards gold."}
    conv = created(post(client, "createRolePlay", json=body))
    fake.push(Reply(text=" Begone."), Reply(text=" Never."))
    assert text_of(post(client, "chat", "Give me gold", conv)) == "Begone."
    assert text_of(post(client, "chat", "Please", conv)) == "Never."
    sent_body = sent(fake, 1)
    assert sent_body["prompt"] == (
        "A dragon guards gold.\n\nKnight: Give me gold\nDragon: Begone.\nKnight: Please\nDragon:"
    )
    assert sent_body["stop"] == ["\nKnight:", "\nDragon:"]
    assert sent_body["temperature"] == 0.5


def test_turbo_and_gpt4_presets_are_chats_with_user_and_assistant_roles(make_app, fake):
    client = make_app(API_KEY="sk-conv", TURBO_MODEL="turbo-x").test_client()
    turbo = created(post(client, "createTurbo"))
    plain_prompt = created(post(client, "createTurbo", "Be brief."))
    json_prompt = created(post(client, "createTurbo", json={"prompt": "Be kind."}))
    gpt4 = created(post(client, "createGPT4", "Think."))
    gpt4_default = created(post(client, "createGPT4"))
    assert text_of(post(client, "chat", "one", turbo)) == "echo: one"
    assert text_of(post(client, "chat", "two", turbo)) == "echo: two"
    for conv in (plain_prompt, json_prompt, gpt4, gpt4_default):
        post(client, "chat", "x", conv)
    system = {"role": "system", "content": CHATGPT_PROMPT}
    assert sent(fake, 1)["model"] == "turbo-x"
    assert sent(fake, 1)["messages"] == [
        system,
        user("one"),
        assistant("echo: one"),
        user("two"),
    ]
    assert "stop" not in sent(fake, 1) and "max_tokens" not in sent(fake, 1)
    assert sent(fake, 2)["messages"][0] == {"role": "system", "content": "Be brief."}
    assert sent(fake, 3)["messages"][0] == {"role": "system", "content": "Be kind."}
    assert sent(fake, 4)["model"] == "gpt-4"
    assert sent(fake, 4)["messages"] == [{"role": "system", "content": "Think."}, user("x")]
    assert sent(fake, 5)["messages"][0] == system
    assert all(r.path == "/v1/chat/completions" for r in fake.received)
    context = text_of(post(client, "context", conv=turbo))
    assert context == CHATGPT_PROMPT + "\n\nHuman: one\nAI: echo: one\nHuman: two\nAI: echo: two"


def test_a_transcript_preset_on_a_chat_model_is_a_chat(make_app, fake):
    client = make_app(API_KEY="sk-conv", COMPLETION_MODEL="gpt-4o-mini").test_client()
    conv = created(post(client, "create"))
    post(client, "chat", "hi", conv)
    assert fake.received[0].path == "/v1/chat/completions"
    body = sent(fake, 0)
    assert body["model"] == "gpt-4o-mini"
    assert body["messages"] == [{"role": "system", "content": DEFAULT_PROMPT.strip()}, user("hi")]
    assert body["stop"] == TRANSCRIPT_STOP and body["temperature"] == 0.9


# --- history -------------------------------------------------------------------------------------


def test_history_sent_is_trimmed_to_max_context_messages(make_app, fake):
    client = make_app(API_KEY="sk-conv", MAX_CONTEXT_MESSAGES="4").test_client()
    conv = created(post(client, "createTurbo"))
    for question in ("q1", "q2", "q3", "q4"):
        assert post(client, "chat", question, conv).status_code == 200
    assert sent(fake, 3)["messages"][1:] == [
        user("q2"),
        assistant("echo: q2"),
        user("q3"),
        assistant("echo: q3"),
        user("q4"),
    ]
    # The conversation itself keeps every turn.
    assert len(post(client, "contextArray", conv=conv).get_json()) == 8


def test_context_length_exceeded_drops_the_oldest_turn_and_retries(client, fake):
    conv = created(post(client, "createTurbo"))
    for question in ("q1", "q2"):
        post(client, "chat", question, conv)
    too_long = Reply(status=400, body={"error": {"code": "context_length_exceeded"}})
    fake.push(too_long)
    assert text_of(post(client, "chat", "q3", conv)) == "echo: q3"
    assert sent(fake, 2)["messages"][1:] == [
        user("q1"),
        assistant("echo: q1"),
        user("q2"),
        assistant("echo: q2"),
        user("q3"),
    ]
    assert sent(fake, 3)["messages"][1:] == [user("q2"), assistant("echo: q2"), user("q3")]
    assert post(client, "contextArray", conv=conv).get_json()[-2:] == ["q3", "echo: q3"]
    # With nothing left to drop the 400 stands, and the conversation is unchanged.
    fresh = created(post(client, "createTurbo"))
    fake.push(too_long)
    # The upstream's message has no token counts to read: they show as "?".
    assert_error(
        post(client, "chat", "huge", fresh), 400, "context_length_exceeded", limit="?", tokens="?"
    )
    assert post(client, "contextArray", conv=fresh).get_json() == []


# --- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "status", "key"),
    [
        (Reply(status=500, body={}), 502, "upstream_error"),
        (Reply(status=503, body={}), 503, "upstream_overloaded"),
        (Reply(drop=True), 502, "upstream_unreachable"),
    ],
)
def test_a_failed_turn_leaves_the_conversation_as_it_was(client, fake, reply, status, key):
    conv = created(post(client, "createTurbo"))
    post(client, "chat", "q1", conv)
    before = post(client, "contextArray", conv=conv).get_json()
    fake.push(reply)
    r = post(client, "chat", "q2", conv)
    assert r.status_code == status
    assert error_text(r) == CATALOGS["en"][key].format(status_code=500)
    fake.push(reply)
    assert post(client, "regenerate", conv=conv).status_code == status
    assert post(client, "contextArray", conv=conv).get_json() == before
    # The lock went with the failure: the next turn runs.
    assert text_of(post(client, "chat", "q2", conv)) == "echo: q2"


def test_regenerate_and_rollback_of_an_empty_conversation_are_409(client, fake):
    conv = created(post(client, "create"))
    assert_error(post(client, "regenerate", conv=conv), 409, "conversation_empty")
    assert_error(post(client, "rollback", conv=conv), 409, "conversation_empty")
    assert fake.received == []


def test_bad_requests_are_400_and_unknown_ids_404(client, fake):
    conv = created(post(client, "create"))
    assert_error(post(client, "chat", " \n", conv), 400, "empty_question")
    assert_error(post(client, "chat", "hi"), 400, "conversation_header_missing")
    assert_error(post(client, "chat", "hi", "nope"), 404, "conversation_not_found")
    assert_error(post(client, "context", conv="bad id!"), 404, "conversation_not_found")
    assert_error(post(client, "finish", conv="x" * 200), 404, "conversation_not_found")
    assert_error(post(client, "chat", b"\xff\xfe", conv), 400, "invalid_text_body")
    r = post(client, "create", headers={"settings": "Poet"})
    assert_error(r, 400, "unknown_settings", settings="Poet")
    assert_error(post(client, "createTurbo", '{"prompt": '), 400, "invalid_json")
    assert_error(
        post(client, "createTurbo", json={"stream": "yes"}), 400, "not_a_boolean", field="stream"
    )
    role = {"human_name": "H", "ai_name": "A", "prompt": "p"}
    for field in role:
        r = post(client, "createRolePlay", json={k: v for k, v in role.items() if k != field})
        assert_error(r, 400, "missing_field", field=field)
    r = post(client, "createRolePlay", json={**role, "ai_name": "A:\nB"})
    assert_error(r, 400, "invalid_name", field="ai_name")
    assert_error(post(client, "createRolePlay", "[]"), 400, "body_not_object")
    assert_error(post(client, "quickAnswer", json={}), 400, "missing_field", field="question")
    r = post(client, "quickAnswer", json={"question": "q", "convType": "gpt5"})
    assert_error(r, 400, "invalid_conv_type", field="convType")
    r = post(client, "quickAnswer", json={"question": "q", "examples": ["only a question"]})
    assert_error(r, 400, "invalid_examples", field="examples")
    assert_error(post(client, "summary", "  "), 400, "empty_text")
    assert_error(client.get(f"{BASE}/share/{conv}"), 404, "shared_conversation_not_found")
    assert_error(client.get(f"{BASE}/nothing"), 404, "not_found")
    assert fake.received == []


def test_errors_are_localized(client):
    r = post(client, "chat", "hi", "missing", query_string={"lang": "ru"})
    assert_error(r, 404, "conversation_not_found", lang="ru")
    r = post(client, "chat", "", "missing", headers={"Accept-Language": "zh-TW,zh;q=0.8"})
    assert_error(r, 400, "empty_question", lang="zh_TW")
    r = client.get(f"{BASE}/share/abc", headers={"Accept-Language": "zh-CN"})
    assert_error(r, 404, "shared_conversation_not_found", lang="zh_CN")


def test_errors_are_plain_text(client):
    r = post(client, "chat", "hi", "missing")
    assert r.status_code == 404 and r.content_type == "text/plain; charset=utf-8"
    assert r.get_data(as_text=True) == CATALOGS["en"]["conversation_not_found"]


def test_rate_limited_is_429(make_app):
    client = make_app(API_KEY="sk-conv", MINUTE_LIMIT="2").test_client()
    post(client, "create")
    post(client, "create")
    r = post(client, "create")
    assert r.status_code == 429 and "Retry-After" in r.headers
    assert error_text(r) == CATALOGS["en"]["rate_limited"].format(seconds=r.headers["Retry-After"])


# --- the store -----------------------------------------------------------------------------------


def test_conversations_expire_when_idle_and_every_touch_restarts_the_timer(make_app, fake):
    app = make_app(API_KEY="sk-conv", CONVERSATION_TTL="100")
    now = [1_000_000.0]
    app.extensions["chatservice"].conversation_store.clock = lambda: now[0]
    client = app.test_client()
    conv = created(post(client, "createTurbo"))
    now[0] += 90
    assert post(client, "chat", "q1", conv).status_code == 200  # a turn refreshes
    now[0] += 90
    assert post(client, "context", conv=conv).status_code == 200  # so does a read
    now[0] += 90
    assert text_of(post(client, "store", conv=conv)) == "保存成功"
    now[0] += 101
    assert_error(post(client, "context", conv=conv), 404, "conversation_not_found")
    # A shared conversation does not expire.
    now[0] += 10**7
    assert client.get(f"{BASE}/share/{conv}").get_json()["SentenceList"] == ["q1", "echo: q1"]


def test_conversations_and_shares_survive_a_restart(make_app, fake, tmp_path):
    url = f"sqlite:///{tmp_path}/c.db"
    first = make_app(API_KEY="sk-conv", STORE_URL=url).test_client()
    conv = created(post(first, "createTurbo"))
    post(first, "chat", "q1", conv)
    post(first, "store", conv=conv)
    second = make_app(API_KEY="sk-conv", STORE_URL=url).test_client()
    assert text_of(post(second, "chat", "q2", conv)) == "echo: q2"
    assert sent(fake, 1)["messages"][1:] == [user("q1"), assistant("echo: q1"), user("q2")]
    assert second.get(f"{BASE}/share/{conv}").get_json()["SentenceList"] == ["q1", "echo: q1"]
    # Storing again overwrites the shared copy.
    post(second, "store", conv=conv)
    shared = first.get(f"{BASE}/share/{conv}").get_json()
    assert shared["SentenceList"] == ["q1", "echo: q1", "q2", "echo: q2"]


def test_one_turn_at_a_time_across_workers(live_server, upstream):
    server = live_server(API_KEY="sk-conv", WORKERS="2")
    url = server.url + BASE
    conv = requests.post(url + "/createTurbo", timeout=10).text
    upstream.push(Reply(delay=0.5), Reply(delay=0.5))
    results: dict[str, requests.Response] = {}
    barrier = threading.Barrier(2)

    def ask(question: str) -> None:
        barrier.wait()
        results[question] = requests.post(
            url + "/chat", data=question, headers={"conversation": conv}, timeout=10
        )

    threads = [threading.Thread(target=ask, args=(q,)) for q in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    statuses = sorted(r.status_code for r in results.values())
    assert statuses == [200, 409]
    loser = next(r for r in results.values() if r.status_code == 409)
    assert error_text_of_requests(loser) == CATALOGS["en"]["conversation_busy"]
    sentences = requests.post(
        url + "/contextArray", headers={"conversation": conv}, timeout=10
    ).json()
    assert len(sentences) == 2
    # The lock is gone with the turn.
    r = requests.post(url + "/chat", data="c", headers={"conversation": conv}, timeout=10)
    assert r.status_code == 200 and r.text == "echo: c"


def test_a_stream_on_a_real_server_stores_its_answer_and_frees_the_lock(live_server, upstream):
    server = live_server(API_KEY="sk-conv")
    url = server.url + BASE
    conv = requests.post(url + "/createTurbo", json={"stream": True}, timeout=10).text
    upstream.push(Reply(text="one\ntwo three", chunk_delay=0.05))
    headers = {"conversation": conv}
    r = requests.post(url + "/chat", data="q", headers=headers, timeout=10)
    assert r.headers["Content-Type"].startswith("text/event-stream")
    events = sse_events(r.content)
    assert "".join(events[:-1]) == "one\ntwo three" and events[-1] == "[DONE]"
    r = requests.post(url + "/contextArray", headers=headers, timeout=10)
    assert r.json() == ["q", "one\ntwo three"]
    r = requests.post(url + "/rollback", headers=headers, timeout=10)
    assert r.status_code == 200 and r.text == "Rollback Succeeded"


def error_text_of_requests(response: requests.Response) -> str:
    if response.headers["Content-Type"].startswith("application/json"):
        return response.json()
    return response.text


# --- streams -------------------------------------------------------------------------------------


def test_a_streaming_conversation_frames_newlines_safely(client, fake):
    conv = created(post(client, "createTurbo", json={"prompt": "p", "stream": True}))
    answer = "line1\nline2 and\n\nline3"
    fake.push(Reply(text=answer), Reply(text="again\n"))
    r = post(client, "chat", "q", conv)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    events = sse_events(r.get_data())
    assert events[-1] == "[DONE]"
    assert all(isinstance(event, str) for event in events[:-1])
    assert "".join(events[:-1]) == answer
    assert sent(fake, 0)["stream"] is True
    assert post(client, "contextArray", conv=conv).get_json() == ["q", answer]
    # regenerate answers a streaming conversation as a stream too.
    events = sse_events(post(client, "regenerate", conv=conv).get_data())
    assert "".join(events[:-1]) == "again\n" and events[-1] == "[DONE]"
    assert post(client, "contextArray", conv=conv).get_json() == ["q", "again"]


def test_a_stream_failure_is_an_error_event_and_changes_nothing(client, fake):
    conv = created(post(client, "createTurbo", json={"stream": True}))
    fake.push(Reply(text="a b c d", drop_after=2))
    r = post(client, "chat", "q", conv, query_string={"lang": "ru"})
    events = sse_events(r.get_data())
    assert events[:2] == ["a", " b"]
    assert events[2:] == [
        {"error": "upstream_interrupted", "message": CATALOGS["ru"]["upstream_interrupted"]}
    ]
    assert post(client, "contextArray", conv=conv).get_json() == []
    # Before the first event a failure is an ordinary error.
    fake.push(Reply(status=503, body={}))
    assert_error(post(client, "chat", "q", conv), 503, "upstream_overloaded")
    assert sse_events(post(client, "chat", "q", conv).get_data())[-1] == "[DONE]"


def test_a_client_leaving_a_stream_releases_the_conversation(client, fake):
    conv = created(post(client, "createTurbo", json={"stream": True}))
    fake.push(Reply(text="a b c d e f", chunk_delay=0.05))
    r = post(client, "chat", "q", conv, buffered=False)
    assert r.status_code == 200
    assert_error(post(client, "chat", "q2", conv), 409, "conversation_busy")
    r.close()  # the client goes away mid-answer
    assert post(client, "contextArray", conv=conv).get_json() == []
    assert sse_events(post(client, "chat", "q3", conv).get_data())[-1] == "[DONE]"


# --- one-off answers -----------------------------------------------------------------------------


def test_quick_answer(client, fake):
    body = {"prompt": "Poet.", "examples": ["sun", "bright", "moon", "pale"], "question": "sea"}
    assert text_of(post(client, "quickAnswer", json=body)) == "echo: sea"
    assert sent(fake, 0)["model"] == "gpt-3.5-turbo"
    assert sent(fake, 0)["messages"] == [
        {"role": "system", "content": "Poet."},
        user("sun"),
        assistant("bright"),
        user("moon"),
        assistant("pale"),
        user("sea"),
    ]
    fake.push(Reply(text=" Waves."))
    assert text_of(post(client, "quickAnswer", json={**body, "convType": "gpt3"})) == "Waves."
    assert sent(fake, 1)["prompt"] == (
        "Poet.\n\nHuman: sun\nAI: bright\nHuman: moon\nAI: pale\nHuman: sea\nAI:"
    )
    post(client, "quickAnswer", json={"question": "q", "convType": "gpt4"})
    assert sent(fake, 2)["model"] == "gpt-4"
    assert sent(fake, 2)["messages"][0] == {"role": "system", "content": CHATGPT_PROMPT}
    fake.push(Reply(text="x\ny z"))
    r = post(client, "quickAnswer", json={"question": "q", "stream": True})
    events = sse_events(r.get_data())
    assert "".join(events[:-1]) == "x\ny z" and events[-1] == "[DONE]"


def test_summary(client, fake):
    fake.push(Reply(text=" Short."))
    assert text_of(post(client, "summary", "A long story.\n")) == "Short."
    body = sent(fake, 0)
    assert fake.received[0].path == "/v1/completions"
    assert body["prompt"] == "A long story.\n\nTl;dr:"
    assert (body["temperature"], body["presence_penalty"], body["max_tokens"]) == (0.7, 1, 512)


def test_an_empty_route_serves_the_face_at_the_root(make_app, fake):
    client = make_app(API_KEY="sk-conv", ROUTE="").test_client()
    conv = text_of(client.post("/chatgpt/createTurbo"))
    r = client.post("/chatgpt/chat", data="hi", headers={"conversation": conv})
    assert text_of(r) == "echo: hi"


# --- the embedded model --------------------------------------------------------------------------


def test_the_embedded_model_serves_a_conversation(make_app, fake, monkeypatch):
    short = dataclasses.replace(model.PRESETS["default"], max_tokens=12)
    monkeypatch.setitem(model.PRESETS, "default", short)
    # One thread: with other tests loading the CPU, llama.cpp's spinning threads slow to a crawl.
    client = make_app(BACKEND="local", API_KEY="sk-unused", LOCAL_THREADS="1").test_client()
    conv = created(post(client, "create"))
    answer = text_of(post(client, "chat", "What is the capital of France?", conv))
    assert answer.strip()
    assert post(client, "contextArray", conv=conv).get_json() == [
        "What is the capital of France?",
        answer,
    ]
    assert fake.received == []
