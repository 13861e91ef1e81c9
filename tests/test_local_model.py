"""The embedded model (SmolLM2-135M via llama-cpp-python) really answers, on both faces."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.conftest import ROOT
from tests.test_upstream_errors import events

MODEL_ID = "smollm2-135m-instruct"
STORY = "Write a long story about a dragon."


@pytest.fixture(scope="module")
def local_client():
    from chatservice import create_app
    from tests.conftest import settings_from

    # No key anywhere: BACKEND=auto must choose the embedded model.
    app = create_app(
        settings_from({"UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1", "STORE_URL": "memory://"})
    )
    return app.test_client()


def test_api_face_answers_from_embedded_model(local_client):
    r = local_client.post(
        "/api", json={"user_content": "What is the capital of France?", "max_tokens": 24}
    )
    assert r.status_code == 200
    body = r.get_json()
    assert body["current_response"].strip()
    assert body["data"]["response"] == body["current_response"]
    assert body["data"]["model"] == MODEL_ID
    assert body["result"][-1] == {"role": "assistant", "content": body["current_response"]}


def test_chat_face_answers_from_embedded_model(local_client):
    r = local_client.post("/api/v1/chat", json={"query": "Say hello.", "max_tokens": 16})
    data = r.get_json()["data"]
    assert r.status_code == 200 and data["response"].strip()
    assert data["model"] == MODEL_ID
    assert data["usage"]["completion_tokens"] <= 16


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api", {"user_content": "Tell me about cats.", "max_tokens": 12, "stream": True}),
        ("/api/v1/chat", {"query": "Tell me about cats.", "max_tokens": 12, "stream": True}),
    ],
)
def test_embedded_model_streams(local_client, path, body):
    got = events(local_client.post(path, json=body))
    assert got[-1] == "[DONE]"
    text = "".join(e["data"]["response"] for e in got[:-1])
    assert text.strip()
    assert len(got) > 3  # token by token, not one block
    assert got[-2]["data"]["finish_reason"] == "length"
    assert all(e["data"]["model"] == MODEL_ID for e in got[:-1])


def ask(client, **fields):
    body = {"query": STORY, "max_tokens": 40, "openai_parameter": False, **fields}
    r = client.post("/api/v1/chat", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()["data"]


def test_max_tokens_reaches_the_model(local_client):
    data = ask(local_client, max_tokens=5)
    assert data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"


def test_stop_reaches_the_model(local_client):
    full = ask(local_client)["response"]  # temperature 0 (chatgpt-service's default): repeatable
    word = full.split()[4]
    data = ask(local_client, stop=[word])
    assert data["finish_reason"] == "stop"
    assert full.startswith(data["response"]) and word not in data["response"]


def test_temperature_top_p_and_penalties_reach_the_model(local_client):
    # top_p this small keeps only the most likely token: greedy whatever the temperature.
    greedy = ask(local_client, temperature=1.5, top_p=0.0001)["response"]
    assert ask(local_client, temperature=0.7, top_p=0.0001)["response"] == greedy
    # temperature 0 (chatgpt-service's default here) samples with a fixed seed: repeatable.
    zero = ask(local_client)["response"]
    assert ask(local_client)["response"] == zero
    penalized = ask(
        local_client, temperature=1.5, top_p=0.0001, frequency_penalty=2.0, presence_penalty=2.0
    )["response"]
    assert penalized.strip() and penalized != greedy


def test_completion_model_request_reaches_the_model(local_client):
    data = ask(local_client, model="text-davinci-003", query="Once upon a time", max_tokens=12)
    assert data["response"].strip() and data["model"] == MODEL_ID


def test_prompt_longer_than_context_is_a_clear_400(make_app):
    client = make_app(BACKEND="local", LOCAL_CONTEXT_TOKENS="128").test_client()
    r = client.post("/api", json={"user_content": "word " * 400, "max_tokens": 10})
    assert r.status_code == 400
    assert r.get_json()["data"]["error"] == "context_length_exceeded"


def test_missing_model_file_is_503(make_app, tmp_path):
    client = make_app(BACKEND="local", LOCAL_MODEL_PATH=str(tmp_path / "none.gguf")).test_client()
    r = client.post("/api/v1/chat", json={"query": "hi"})
    assert r.status_code == 503
    assert r.get_json()["data"]["error"] == "local_model_unavailable"


def test_backend_local_ignores_request_keys(make_app, fake):
    client = make_app(BACKEND="local", API_KEY="sk-unused").test_client()
    r = client.post("/api", json={"user_content": "hi", "api_key": "sk-x", "max_tokens": 4})
    assert r.status_code == 200 and r.get_json()["data"]["model"] == MODEL_ID
    assert fake.received == []


def test_healthz_answers_while_the_model_generates(live_server):
    server = live_server(BACKEND="local")
    body = {"query": STORY, "max_tokens": 300, "stream": True}
    with requests.post(server.url + "/api/v1/chat", json=body, stream=True, timeout=60) as r:
        lines = r.iter_lines(chunk_size=1, decode_unicode=True)
        next(line for line in lines if line.startswith("data: "))  # generation has started
        started = time.monotonic()
        health = requests.get(server.url + "/healthz", timeout=5)
        health_time = time.monotonic() - started
        remaining = [line for line in lines if line.startswith("data: ")]
    assert health.json() == {"status": "ok"}
    # The model kept generating after /healthz was answered: the hub was not blocked.
    assert len(remaining) > 50 and remaining[-1] == "data: [DONE]"
    assert health_time < 1.0, health_time


def test_full_local_queue_answers_503(live_server):
    server = live_server(BACKEND="local", LOCAL_MAX_QUEUE="0")
    body = {"query": STORY, "max_tokens": 300, "stream": True}
    first_event = threading.Event()
    done = threading.Event()

    def generate() -> None:
        with requests.post(server.url + "/api/v1/chat", json=body, stream=True, timeout=60) as r:
            for line in r.iter_lines(chunk_size=1):
                if line:
                    first_event.set()
        done.set()

    thread = threading.Thread(target=generate)
    thread.start()
    assert first_event.wait(30)
    r = requests.post(server.url + "/api", json={"user_content": "hi", "lang": "zh_CN"}, timeout=10)
    assert not done.is_set()
    assert r.status_code == 503
    assert r.json()["data"]["error"] == "local_model_busy"
    catalog = json.loads((ROOT / "i18n" / "zh_CN.json").read_text(encoding="utf-8"))
    assert r.json()["data"]["response"] == catalog["local_model_busy"]
    thread.join(60)


def test_model_errors_leave_no_traceback_in_the_server_log(live_server, tmp_path):
    """The model's thread hands its errors to the request: gevent's hub would print one it
    raised itself as an uncaught error, with a traceback."""
    server = live_server(BACKEND="local", LOCAL_MODEL_PATH=str(tmp_path / "none.gguf"))
    for stream in (False, True):
        body = {"user_content": "hi", "max_tokens": 10, "stream": stream}
        r = requests.post(server.url + "/api", json=body, timeout=60)
        assert r.status_code == 503, r.text
        assert r.json()["data"]["error"] == "local_model_unavailable"
    log = server.log_text()
    assert "embedded model could not be loaded" in log
    assert "Traceback" not in log and "failed with" not in log, log


def test_a_stream_hands_over_its_first_text_without_waiting_for_a_batch():
    """The first batch ends at the first part with text (a chat stream's first part only
    names the role); later ones at the batch's time."""
    from chatservice.backends.local import _next_parts

    def chunk(**delta):
        return {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}

    parts = iter([chunk(role="assistant"), chunk(content="Once"), chunk(content=" upon")])
    batch, done = _next_parts(parts, 60.0, first=True)
    assert [p["choices"][0]["delta"] for p in batch] == [{"role": "assistant"}, {"content": "Once"}]
    assert not done
    batch, done = _next_parts(parts, 60.0)
    assert [p["choices"][0]["delta"] for p in batch] == [{"content": " upon"}] and done
