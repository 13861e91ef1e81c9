"""Upstream faults become clear, localized 4xx/5xx answers on both faces; streams end cleanly."""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import free_port
from tests.fakeupstream import Reply

CASES = [
    (Reply(status=401, body={"error": {"code": "invalid_api_key"}}), 401, "upstream_unauthorized"),
    (
        Reply(status=403, body={"error": {"code": "unsupported_country"}}),
        403,
        "upstream_refused",
    ),
    (
        Reply(status=429, body={"error": {"code": "rate_limit_exceeded"}}),
        429,
        "upstream_rate_limited",
    ),
    (Reply(status=429, body={"error": {"code": "insufficient_quota"}}), 429, "upstream_quota"),
    (
        Reply(status=400, body={"error": {"code": "context_length_exceeded"}}),
        400,
        "context_length_exceeded",
    ),
    # A 404 stays a 404: the SDKs raise NotFoundError, which clients read as "no such model".
    (Reply(status=404, body={"error": {"code": "model_not_found"}}), 404, "model_not_found"),
    (Reply(status=422, body={"error": {"code": "invalid_value"}}), 400, "upstream_bad_request"),
    (Reply(status=500, body={"error": {"message": "boom"}}), 502, "upstream_error"),
    (Reply(status=502, body="<html>bad gateway</html>"), 502, "upstream_error"),
    (Reply(status=503, body={"error": {"message": "overloaded"}}), 503, "upstream_overloaded"),
    (Reply(status=504), 504, "upstream_timeout"),
    (Reply(drop=True), 502, "upstream_unreachable"),
    (Reply(body="not an OpenAI answer"), 502, "upstream_bad_response"),
    (Reply(body={"choices": []}), 502, "upstream_bad_response"),
]


#: Refusals that blame the key itself (by their code): the pool's one key is taken out. A
#: bare 403 or a plain 429 may be the request's own: the client gets the upstream's status.
KEY_REFUSALS = {"upstream_unauthorized", "upstream_quota"}


@pytest.mark.parametrize(("reply", "status", "key"), CASES)
def test_api_face_maps_upstream_errors(client, fake, reply, status, key):
    fake.push(reply, reply, reply)  # transient faults are retried twice
    # The request's own key: no pool, no failover, the upstream's verdict mapped directly.
    r = client.post("/api?lang=ru", json={"user_content": "hi", "api_key": "sk-request"})
    assert r.status_code == status
    body = r.get_json()
    assert body["code"] == status and body["msg"] == "failed"
    assert body["data"]["error"] == key
    assert body["data"]["response"]  # a localized sentence
    assert "Traceback" not in r.get_data(as_text=True)


@pytest.mark.parametrize(("reply", "status", "key"), CASES)
def test_chat_face_maps_upstream_errors(client, fake, reply, status, key):
    fake.push(reply, reply, reply)
    # The configured key: refusing it leaves the pool with no usable key.
    if key in KEY_REFUSALS:
        status, key = 503, "no_upstream_key"
    r = client.post("/api/v1/chat", json={"query": "hi"}, headers={"Accept-Language": "zh-CN"})
    assert r.status_code == status
    assert r.get_json()["code"] == status
    assert r.get_json()["data"] == {"error": key}


def test_upstream_retry_after_is_passed_on(client, fake):
    fake.push(
        Reply(
            status=429,
            body={"error": {"code": "rate_limit_exceeded"}},
            headers={"Retry-After": "7"},
        )
    )
    r = client.post("/api", json={"user_content": "hi", "api_key": "sk-request"})
    assert r.status_code == 429 and r.headers["Retry-After"] == "7"


def test_upstream_unreachable(make_app, fake):
    app = make_app(API_KEY="sk-x", UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1")
    r = app.test_client().post("/api/v1/chat", json={"query": "hi"})
    assert r.status_code == 502
    assert r.get_json()["data"]["error"] == "upstream_unreachable"


def test_upstream_silent_past_read_timeout_is_504(make_app, fake):
    client = make_app(API_KEY="sk-x", UPSTREAM_READ_TIMEOUT="0.3").test_client()
    fake.push(Reply(stall=1.0))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 504
    assert r.get_json()["data"]["error"] == "upstream_timeout"


def events(response) -> list:
    text = response.get_data(as_text=True)
    assert text.endswith("\n\n")
    out = []
    for block in text.split("\n\n")[:-1]:
        assert block.startswith("data: "), block
        payload = block[len("data: ") :]
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def test_stream_error_before_first_event_is_plain_json(client, fake):
    fake.push(Reply(status=401, body={"error": {"code": "invalid_api_key"}}))
    r = client.post("/api", json={"user_content": "hi", "stream": True, "api_key": "sk-req"})
    assert r.status_code == 401
    assert r.mimetype == "application/json"
    assert r.get_json()["data"]["error"] == "upstream_unauthorized"


def test_stream_broken_midway_ends_with_one_error_event(client, fake):
    fake.push(Reply(text="one two three four five", drop_after=2))
    r = client.post("/api/v1/chat?lang=zh_TW", json={"query": "hi", "stream": True})
    assert r.status_code == 200
    got = events(r)
    assert [e["data"]["response"] for e in got[:2]] == ["one", " two"]
    last = got[-1]
    assert last != "[DONE]" and "[DONE]" not in got
    assert last["data"] == {"error": "upstream_interrupted"}
    assert last["code"] == 502
    assert last["msg"] == "上游 API 在回答完成前中斷。"


def test_stream_silent_before_first_chunk_is_a_plain_504(make_app, fake):
    client = make_app(API_KEY="sk-x", UPSTREAM_STREAM_IDLE_TIMEOUT="0.3").test_client()
    fake.push(Reply(text="a b c", chunk_delay=0.8))
    r = client.post("/api", json={"user_content": "hi", "stream": True})
    # The headers came at once, the first chunk only after the idle timeout: nothing was
    # sent yet, so the client gets an ordinary 504.
    assert r.status_code == 504
    assert r.get_json()["data"]["error"] == "upstream_timeout"


def test_stream_silent_midway_ends_with_timeout_event(make_app, fake):
    client = make_app(API_KEY="sk-x", UPSTREAM_STREAM_IDLE_TIMEOUT="0.3").test_client()
    fake.push(Reply(text="a b c d", pause_after=2, pause=2.0))
    started = time.monotonic()
    got = events(client.post("/api/v1/chat", json={"query": "hi", "stream": True}))
    assert time.monotonic() - started < 1.5  # ended by the idle timeout, not the upstream
    assert [e["data"].get("response") for e in got[:2]] == ["a", " b"]
    assert got[-1]["data"] == {"error": "upstream_timeout"} and got[-1]["code"] == 504


def test_idle_timeout_does_not_cut_a_slow_first_answer(make_app, fake):
    client = make_app(
        API_KEY="sk-x", UPSTREAM_READ_TIMEOUT="2", UPSTREAM_STREAM_IDLE_TIMEOUT="0.3"
    ).test_client()
    fake.push(Reply(delay=0.8))  # time to first byte under the read timeout
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 200


def test_stream_without_finish_is_reported(client, fake):
    fake.push(Reply(text="a b", finish=False))
    got = events(client.post("/api", json={"user_content": "hi", "stream": True}))
    assert [e["data"]["response"] for e in got[:2]] == ["a", " b"]
    assert got[-1]["data"]["error"] == "upstream_interrupted"
    assert got[-1]["msg"] == "failed"


def test_stream_newlines_cannot_break_framing(client, fake):
    fake.push(Reply(text="line1\n\ndata: [DONE]\n\nline2"))
    got = events(client.post("/api/v1/chat", json={"query": "hi", "stream": True}))
    assert got[-1] == "[DONE]"
    text = "".join(e["data"]["response"] for e in got[:-1])
    assert text == "line1\n\ndata: [DONE]\n\nline2"
    assert got[-2]["data"]["finish_reason"] == "stop"
    assert all(e["data"]["finish_reason"] is None for e in got[:-2])


def test_stream_headers(client, fake):
    r = client.post("/api", json={"user_content": "hi", "stream": True})
    assert r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    assert r.headers["X-Accel-Buffering"] == "no"
    got = events(r)
    assert got[-1] == "[DONE]"
    assert "".join(e["data"]["response"] for e in got[:-1]) == "echo: hi"
    assert got[0]["code"] == 200 and got[0]["msg"] == "success"
    assert fake.received[0].json["stream"] is True
