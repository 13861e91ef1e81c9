"""The chat-room face of ChatGPT-API on gin: server-side history per room, streaming, its
settings."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from tests.fakeupstream import Reply
from tests.test_i18n import CATALOGS

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
SUCCESS_END = {"code": 200, "msg": "success", "data": ""}


def user(content: str) -> dict[str, str]:
    return {"role": "user", "content": content}


def answer(content: str) -> dict[str, str]:
    return {"role": "assistant", "content": "echo: " + content}


def sent_messages(fake, index: int) -> list[dict[str, str]]:
    """The messages the upstream got in its ``index``-th request."""
    return fake.received[index].json["messages"]


def sse_events(body: bytes) -> list:
    """Every event of a complete SSE body; each must be one ``data:`` line of JSON or [DONE]."""
    text = body.decode("utf-8")
    assert text.endswith("\n\n"), text
    events = []
    for block in text[:-2].split("\n\n"):
        assert block.startswith("data: ") and "\n" not in block, block
        payload = block[len("data: ") :]
        events.append(payload if payload == "[DONE]" else json.loads(payload))
    return events


@pytest.fixture
def room(make_app):
    """A test client of a chat-room app whose upstream is the fake one."""
    return make_app(API_KEY="sk-x", UPSTREAM_RETRIES="0").test_client()


def test_one_turn_answers_in_the_gin_envelope(room, fake):
    response = room.post("/api/chat-room", json={"role": "user", "content": "hi"})
    assert response.status_code == 200
    assert response.get_json() == {"code": 200, "msg": "success", "data": "echo: hi"}
    assert sent_messages(fake, 0) == [SYSTEM, user("hi")]


def test_the_second_turn_carries_the_history(room, fake):
    room.post("/api/chat-room", json={"role": "user", "content": "one"})
    response = room.post("/api/chat-room/", json={"content": "two", "name": "alice"})
    assert response.get_json()["data"] == "echo: two"
    two = {"role": "user", "content": "two", "name": "alice"}
    assert sent_messages(fake, 1) == [SYSTEM, user("one"), answer("one"), two]


def test_rooms_are_separated_by_room_id_and_by_client_ip(room, fake):
    room.post("/api/chat-room", json={"content": "a1"}, headers={"X-Room-Id": "room-a"})
    room.post("/api/chat-room", json={"content": "b1"}, headers={"X-Room-Id": "room.b:1"})
    ip1 = {"REMOTE_ADDR": "10.0.0.1"}
    ip2 = {"REMOTE_ADDR": "10.0.0.2"}
    room.post("/api/chat-room", json={"content": "ip1"}, environ_base=ip1)
    room.post("/api/chat-room", json={"content": "ip2"}, environ_base=ip2)
    room.post("/api/chat-room", json={"content": "a2"}, headers={"X-Room-Id": "room-a"})
    room.post("/api/chat-room", json={"content": "ip1b"}, environ_base=ip1)
    # A room id spelled like an IP is still not that IP's room.
    room.post("/api/chat-room", json={"content": "x"}, headers={"X-Room-Id": "10.0.0.2"})
    assert sent_messages(fake, 4) == [SYSTEM, user("a1"), answer("a1"), user("a2")]
    assert sent_messages(fake, 5) == [SYSTEM, user("ip1"), answer("ip1"), user("ip1b")]
    assert sent_messages(fake, 6) == [SYSTEM, user("x")]


def test_behind_a_trusted_proxy_the_forwarded_ip_names_the_room(make_app, fake):
    client = make_app(API_KEY="sk-x", TRUSTED_PROXIES="1").test_client()
    proxy = {"REMOTE_ADDR": "127.0.0.1"}
    for who, content in (("203.0.113.1", "first"), ("203.0.113.2", "other")):
        client.post(
            "/api/chat-room",
            json={"content": content},
            headers={"X-Forwarded-For": who},
            environ_base=proxy,
        )
    client.post(
        "/api/chat-room",
        json={"content": "again"},
        headers={"X-Forwarded-For": "203.0.113.1"},
        environ_base=proxy,
    )
    assert sent_messages(fake, 1) == [SYSTEM, user("other")]
    assert sent_messages(fake, 2) == [SYSTEM, user("first"), answer("first"), user("again")]


def test_history_keeps_the_newest_messages_and_always_the_system_prompt(make_app, fake):
    client = make_app(API_KEY="sk-x", HISTORY_MAX_MESSAGES="4").test_client()
    for turn in ("t1", "t2", "t3", "t4"):
        client.post("/api/chat-room", json={"content": turn})
    # Before t4 the room held t1..t3 with answers, trimmed to the newest four messages.
    assert sent_messages(fake, 3) == [
        SYSTEM,
        user("t2"),
        answer("t2"),
        user("t3"),
        answer("t3"),
        user("t4"),
    ]


def test_an_idle_room_expires_after_conversation_ttl(make_app, fake):
    app = make_app(API_KEY="sk-x", CONVERSATION_TTL="60")
    now = [1000.0]
    app.extensions["chatservice"].shared_state.clock = lambda: now[0]
    client = app.test_client()
    client.post("/api/chat-room", json={"content": "t1"})
    now[0] += 59
    client.post("/api/chat-room", json={"content": "t2"})
    assert sent_messages(fake, 1) == [SYSTEM, user("t1"), answer("t1"), user("t2")]
    # Each turn starts the idle time again: 59 s after t2 (118 s after t1) all is kept.
    now[0] += 59
    client.post("/api/chat-room", json={"content": "t3"})
    assert sent_messages(fake, 2)[1:3] == [user("t1"), answer("t1")]
    now[0] += 61
    client.post("/api/chat-room", json={"content": "t4"})
    assert sent_messages(fake, 3) == [SYSTEM, user("t4")]


def test_reset_forgets_only_this_room(room, fake):
    room.post("/api/chat-room", json={"content": "mine"}, headers={"X-Room-Id": "r1"})
    room.post("/api/chat-room", json={"content": "theirs"}, headers={"X-Room-Id": "r2"})
    response = room.post("/api/chat-room/reset", headers={"X-Room-Id": "r1"})
    assert response.status_code == 200
    assert response.get_json() == SUCCESS_END
    room.post("/api/chat-room", json={"content": "again"}, headers={"X-Room-Id": "r1"})
    room.post("/api/chat-room", json={"content": "more"}, headers={"X-Room-Id": "r2"})
    assert sent_messages(fake, 2) == [SYSTEM, user("again")]
    assert sent_messages(fake, 3) == [SYSTEM, user("theirs"), answer("theirs"), user("more")]


def test_a_failed_turn_leaves_the_history_unchanged(room, fake):
    room.post("/api/chat-room", json={"content": "one"})
    fake.push(Reply(status=500, body={"error": {}}))
    response = room.post("/api/chat-room", json={"content": "lost"})
    assert response.status_code == 502
    body = response.get_json()
    assert body["code"] == 502 and body["data"] is None and body["error"] == "upstream_error"
    assert body["msg"] == CATALOGS["en"]["upstream_error"].format(status_code=500)
    room.post("/api/chat-room", json={"content": "two"})
    assert sent_messages(fake, 2) == [SYSTEM, user("one"), answer("one"), user("two")]


def test_stream_relays_openai_chunks_then_the_success_envelope(room, fake):
    room.post("/api/chat-room", json={"content": "one"})
    response = room.post("/api/chat-room/stream", json={"role": "user", "content": "two words"})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = sse_events(response.data)
    chunks, end, done = events[:-2], events[-2], events[-1]
    assert (end, done) == (SUCCESS_END, "[DONE]")
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    # Every chunk is relayed: the role-only first one and the empty finishing one too.
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(delta.get("content", "") for delta in deltas) == "echo: two words"
    assert fake.received[1].json["stream"] is True
    assert sent_messages(fake, 1) == [SYSTEM, user("one"), answer("one"), user("two words")]
    # The streamed answer joined the history.
    room.post("/api/chat-room", json={"content": "three"})
    assert sent_messages(fake, 2)[3:] == [user("two words"), answer("two words"), user("three")]


def test_a_stream_broken_midway_leaves_the_history_unchanged(room, fake):
    room.post("/api/chat-room", json={"content": "one"})
    fake.push(Reply(text="a b c d", drop_after=2))
    response = room.post("/api/chat-room/stream", json={"content": "lost"})
    assert response.status_code == 200
    events = sse_events(response.data)
    assert "[DONE]" not in events
    contents = [e["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "a", " b"]
    assert events[-1] == {
        "code": 502,
        "msg": CATALOGS["en"]["upstream_interrupted"],
        "data": None,
        "error": "upstream_interrupted",
    }
    room.post("/api/chat-room", json={"content": "two"})
    assert sent_messages(fake, 2) == [SYSTEM, user("one"), answer("one"), user("two")]


def test_a_stream_failing_before_the_first_event_is_a_json_error(room, fake):
    fake.push(Reply(status=500, body={"error": {}}))
    response = room.post("/api/chat-room/stream?lang=zh_CN", json={"content": "q"})
    assert response.status_code == 502
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "code": 502,
        "msg": CATALOGS["zh_CN"]["upstream_error"].format(status_code=500),
        "data": None,
        "error": "upstream_error",
    }


def test_chat_settings_reach_the_upstream(make_app, fake):
    client = make_app(
        API_KEY="sk-x",
        CHAT_MODEL="gpt-4o-mini",
        CHAT_TEMPERATURE="0.3",
        CHAT_MAXTOKENS="77",
        CHAT_TOPP="0.5",
        CHAT_PRESENCEPENALTY="0.1",
        CHAT_FREQUENCYPENALTY="0.2",
        CHAT_BOTDESC="You are Alice.",
    ).test_client()
    client.post("/api/chat-room", json={"content": "hi"})
    client.post("/api/chat-room/stream", json={"content": "again"})
    for sent in fake.received:
        assert sent.json["model"] == "gpt-4o-mini"
        assert sent.json["max_tokens"] == 77
        assert sent.json["temperature"] == 0.3
        assert sent.json["top_p"] == 0.5
        assert sent.json["presence_penalty"] == 0.1
        assert sent.json["frequency_penalty"] == 0.2
        assert sent.json["messages"][0] == {"role": "system", "content": "You are Alice."}


def test_unset_chat_settings_are_not_sent(room, fake):
    room.post("/api/chat-room", json={"content": "hi"})
    sent = fake.received[0].json
    assert sent["model"] == "gpt-3.5-turbo"
    for name in ("max_tokens", "temperature", "top_p", "presence_penalty", "frequency_penalty"):
        assert name not in sent


@pytest.mark.parametrize(
    ("path", "body", "headers", "key", "params"),
    [
        ("/api/chat-room", {"role": "user"}, {}, "missing_field", {"field": "content"}),
        ("/api/chat-room", {"content": "  "}, {}, "empty_field", {"field": "content"}),
        ("/api/chat-room", {"content": 5}, {}, "not_a_string", {"field": "content"}),
        (
            "/api/chat-room",
            {"content": "q", "role": "bot"},
            {},
            "invalid_turn_role",
            {"field": "role"},
        ),
        ("/api/chat-room", {"content": "q", "role": 1}, {}, "not_a_string", {"field": "role"}),
        ("/api/chat-room", {"content": "q", "name": []}, {}, "not_a_string", {"field": "name"}),
        ("/api/chat-room/stream", {"content": ""}, {}, "empty_field", {"field": "content"}),
        ("/api/chat-room/stream", ["q"], {}, "body_not_object", {}),
        ("/api/chat-room", {"content": "q"}, {"X-Room-Id": "a b"}, "invalid_room_id", {}),
        ("/api/chat-room", {"content": "q"}, {"X-Room-Id": ""}, "invalid_room_id", {}),
        ("/api/chat-room", {"content": "q"}, {"X-Room-Id": "x" * 129}, "invalid_room_id", {}),
        ("/api/chat-room/reset", None, {"X-Room-Id": "é"}, "invalid_room_id", {}),
    ],
)
def test_invalid_requests_are_400_in_the_requested_language(
    room, fake, path, body, headers, key, params
):
    response = room.post(path + "?lang=ru", json=body, headers=headers)
    assert response.status_code == 400
    assert response.get_json() == {
        "code": 400,
        "msg": CATALOGS["ru"][key].format(**params),
        "data": None,
        "error": key,
    }
    assert fake.received == []


def test_the_longest_valid_room_id_is_accepted(room, fake):
    response = room.post("/api/chat-room", json={"content": "q"}, headers={"X-Room-Id": "x" * 128})
    assert response.status_code == 200


def test_routing_errors_use_the_room_envelope(room):
    response = room.get("/api/chat-room")
    assert response.status_code == 405
    assert response.get_json()["error"] == "method_not_allowed"
    assert response.get_json()["data"] is None


def test_history_continues_across_servers_sharing_redis(live_server, upstream, redis_url):
    # The second server names the setting by its old name: both reach the same shared state.
    first = live_server(API_KEY="sk-x", SHARED_STATE_URL=redis_url)
    second = live_server(API_KEY="sk-x", SHARED_STATE_URL=redis_url)
    headers = {"X-Room-Id": f"shared-{uuid.uuid4().hex}"}
    r = requests.post(
        first.url + "/api/chat-room", json={"content": "one"}, headers=headers, timeout=10
    )
    assert r.json() == {"code": 200, "msg": "success", "data": "echo: one"}
    with requests.post(
        second.url + "/api/chat-room/stream",
        json={"content": "two"},
        headers=headers,
        stream=True,
        timeout=10,
    ) as r:
        events = sse_events(r.content)
    assert events[-2:] == [SUCCESS_END, "[DONE]"]
    r = requests.post(
        first.url + "/api/chat-room", json={"content": "three"}, headers=headers, timeout=10
    )
    assert r.status_code == 200
    assert sent_messages(upstream, 1) == [SYSTEM, user("one"), answer("one"), user("two")]
    assert sent_messages(upstream, 2)[1:] == [
        user("one"),
        answer("one"),
        user("two"),
        answer("two"),
        user("three"),
    ]


def test_a_client_leaving_a_stream_stops_the_upstream_and_keeps_no_history(live_server, upstream):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.1)
    headers = {"X-Room-Id": "leaver"}
    r = requests.post(
        server.url + "/api/chat-room/stream",
        json={"content": "long"},
        headers=headers,
        stream=True,
        timeout=10,
    )
    next(line for line in r.iter_lines(chunk_size=1) if line.startswith(b"data: "))
    r.close()
    record = upstream.wait_for(1)[0]
    deadline = time.monotonic() + 5
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # The upstream saw its connection closed long before its 10 s answer was over.
    assert record.finished is not None and record.client_gone
    upstream.default = Reply()
    r = requests.post(
        server.url + "/api/chat-room", json={"content": "next"}, headers=headers, timeout=10
    )
    assert r.status_code == 200
    assert sent_messages(upstream, 1) == [SYSTEM, user("next")]


def test_completion_model_gets_a_transcript_prompt(make_app, fake):
    client = make_app(API_KEY="sk-x", CHAT_MODEL="gpt-3.5-turbo-instruct", BOT_DESC="Be kind.")
    r = client.test_client().post("/api/chat-room", json={"role": "user", "content": "hi"})
    assert r.status_code == 200
    sent = fake.received[0]
    assert sent.path == "/v1/completions"
    assert sent.json["prompt"] == "Be kind.\nHuman: hi\nAI:"
    assert sent.json["stop"] == ["Human:"]


def test_two_simultaneous_turns_in_one_room_one_gets_409(live_server, upstream, redis_url):
    # Two workers sharing Redis: the lock holds whichever worker takes the second turn.
    server = live_server(API_KEY="sk-x", WORKERS="2", SHARED_STATE_URL=redis_url)
    upstream.default = Reply(text=" ".join(f"w{i}" for i in range(20)), chunk_delay=0.05)
    headers = {"X-Room-Id": f"busy-{uuid.uuid4().hex}", "Accept-Language": "ru"}
    url = server.url + "/api/chat-room"
    with requests.post(
        url + "/stream", json={"content": "first"}, headers=headers, stream=True, timeout=10
    ) as first:
        lines = first.iter_lines(chunk_size=1)
        next(line for line in lines if line.startswith(b"data: "))  # the turn is running
        for path in ("", "/stream", "/reset"):
            busy = requests.post(
                url + path, json={"content": "second"}, headers=headers, timeout=10
            )
            assert busy.status_code == 409
            assert busy.json() == {
                "code": 409,
                "msg": CATALOGS["ru"]["chat_room_busy"],
                "data": None,
                "error": "chat_room_busy",
            }
        assert b"data: [DONE]" in list(lines)
    # The finished turn freed the room and kept its answer; the refused ones left no trace.
    upstream.default = Reply()
    r = requests.post(url, json={"content": "third"}, headers=headers, timeout=10)
    assert r.json()["data"] == "echo: third"
    assert [m["content"] for m in sent_messages(upstream, 1)[1:3]] == [
        "first",
        " ".join(f"w{i}" for i in range(20)),
    ]
    assert len(upstream.received) == 2
