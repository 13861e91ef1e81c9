"""The answer pipeline: every face's answer goes through it once, and its observers see
each call (resolved model, route), the result or the chunks, errors and how the call ended.

An observer is added to a real app's pipeline; the answers come from the fake upstream.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import simple_websocket

from chatservice.errors import RateLimited
from chatservice.pipeline import Call, Watch
from tests.fakeupstream import Reply
from tests.test_ops import parse, value

MESSAGES = [{"role": "user", "content": "hi"}]


class Recorder:
    """An observer writing down what it sees: ``calls[i] = (call, [events])``."""

    def __init__(self, refuse: Exception | None = None) -> None:
        self.calls: list[tuple[Call, list[tuple[str, Any]]]] = []
        self.refuse = refuse

    def begin(self, call: Call) -> Watch:
        events: list[tuple[str, Any]] = []
        self.calls.append((call, events))
        if self.refuse is not None:
            raise self.refuse
        return _Events(events)


class _Events(Watch):
    def __init__(self, events: list[tuple[str, Any]]) -> None:
        self.events = events

    def result(self, result: Any) -> None:
        self.events.append(("result", result.text))

    def chunk(self, chunk: Any) -> None:
        self.events.append(("chunk", chunk.text))

    def error(self, err: Exception) -> None:
        self.events.append(("error", getattr(err, "key", type(err).__name__)))

    def end(self, outcome: str) -> None:
        self.events.append(("end", outcome))


class Broken:
    """An observer whose watch fails at every step: the answers must not notice."""

    def begin(self, call: Call) -> Watch:
        return _Failing()


class _Failing(Watch):
    def result(self, result: Any) -> None:
        raise RuntimeError("observer bug")

    chunk = error = end = result  # type: ignore[assignment]


def observed(make_app, *observers: Any, **env: str):
    app = make_app(
        API_KEY="sk-x",
        MODEL_ALIASES="gpt-4=gpt-4o-mini",
        CHAT_MODEL="gpt-4",
        TURBO_MODEL="gpt-4",
        **env,
    )
    for observer in observers:
        app.extensions["chatservice"].pipeline.observe(observer)
    return app.test_client()


def _conversation(client, stream: bool) -> str:
    r = client.post("/api/chatgpt/createTurbo", json={"prompt": "", "stream": stream})
    assert r.status_code == 200
    return r.get_data(as_text=True)


WHOLE = [  # (path, body): one whole answer per face
    ("/api", {"user_content": "hi", "model": "gpt-4"}),
    ("/api/v1/chat", {"query": "hi", "model": "gpt-4"}),
    ("/api/v1/chat/completions", {"messages": MESSAGES, "model": "gpt-4"}),
    ("/api/chat-room", {"content": "hi"}),
]


@pytest.mark.parametrize(("path", "body"), WHOLE)
def test_each_face_is_one_observed_call_with_the_resolved_model(make_app, fake, path, body):
    recorder = Recorder()
    client = observed(make_app, recorder)
    r = client.post(path, json=body)
    assert r.status_code == 200
    [(call, events)] = recorder.calls
    assert call.asked_model == "gpt-4"
    assert call.request.model == "gpt-4o-mini" == fake.received[0].json["model"]
    assert call.route.name == "upstream" and not call.streamed
    assert events == [("result", "echo: hi"), ("end", "done")]


def test_conversations_are_observed_calls_too(make_app, fake):
    recorder = Recorder()
    client = observed(make_app, recorder)
    conv = _conversation(client, stream=False)
    r = client.post("/api/chatgpt/chat", data="hi", headers={"conversation": conv})
    assert r.status_code == 200 and r.get_data(as_text=True) == "echo: hi"
    [(call, events)] = recorder.calls
    assert call.request.model == "gpt-4o-mini" and call.route.name == "upstream"
    assert events[-1] == ("end", "done")


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/api/v1/chat/completions", {"messages": MESSAGES, "model": "gpt-4", "stream": True}),
        ("/api/v1/chat", {"query": "hi", "model": "gpt-4", "stream": True}),
        ("/api/chat-room/stream", {"content": "hi"}),
    ],
)
def test_a_stream_shows_its_chunks_then_done(make_app, fake, path, body):
    recorder = Recorder()
    client = observed(make_app, recorder)
    r = client.post(path, json=body)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert r.get_data().endswith(b"data: [DONE]\n\n")
    [(call, events)] = recorder.calls
    assert call.streamed and call.request.model == "gpt-4o-mini"
    text = "".join(value for kind, value in events if kind == "chunk")
    assert text == "echo: hi"
    assert events[-1] == ("end", "done")


def test_a_client_leaving_mid_stream_ends_the_call_as_disconnected(make_app, fake):
    recorder = Recorder()
    client = observed(make_app, recorder)
    fake.push(Reply(text="one two three four five six", chunk_delay=0.05))
    r = client.post(
        "/api/v1/chat/completions",
        json={"messages": MESSAGES, "model": "gpt-4", "stream": True},
        buffered=False,
    )
    assert next(iter(r.response)).startswith(b"data: ")
    r.close()  # what the WSGI server does when the client goes away
    [(_call, events)] = recorder.calls
    assert events[-1] == ("end", "disconnected")
    assert ("end", "done") not in events


def test_an_upstream_failure_is_seen_as_an_error(make_app, fake):
    recorder = Recorder()
    client = observed(make_app, recorder)
    fake.push(Reply(status=500, body={"error": {"message": "boom"}}))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 502
    [(_call, events)] = recorder.calls
    assert events == [("error", "upstream_error"), ("end", "failed")]


def test_an_observer_can_refuse_a_call_before_the_backend_is_called(make_app, fake):
    """The admission seam: a refusal is the face's ordinary error, the upstream never asked."""
    recorder = Recorder()
    client = observed(make_app, recorder, Recorder(refuse=RateLimited(7)))
    r = client.post("/api/v1/chat/completions", json={"messages": MESSAGES})
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "rate_limited"
    assert fake.received == []
    [(_call, events)] = recorder.calls
    assert events == [("error", "rate_limited"), ("end", "failed")]


def test_a_failing_observer_does_not_break_answers(make_app, fake):
    client = observed(make_app, Broken())
    r = client.post("/api/v1/chat", json={"query": "hi"})
    assert r.status_code == 200 and r.get_json()["data"]["response"] == "echo: hi"
    r = client.post("/api/v1/chat/completions", json={"messages": MESSAGES, "stream": True})
    assert r.status_code == 200 and r.get_data().endswith(b"data: [DONE]\n\n")


def test_a_websocket_answer_is_observed_once_by_the_metrics(live_server, upstream):
    """The WebSocket face goes through the pipeline too: its call shows in the backend
    metrics (a real server, a real socket)."""
    server = live_server(API_KEY="sk-x", MODEL_ALIASES="gpt-4=gpt-4o-mini")
    ws = simple_websocket.Client.connect(server.url.replace("http", "ws") + "/api/ws")
    try:
        ws.send(json.dumps({"seq": "1", "data": {"query": "hi", "model": "gpt-4"}}))
        while True:
            frame = json.loads(ws.receive(timeout=10))
            assert frame["code"] == 0
            if frame["data"]["finish_reason"] is not None:
                break
    finally:
        ws.close()
    assert upstream.received[0].json["model"] == "gpt-4o-mini"
    samples = parse(requests.get(server.url + "/metrics", timeout=10).text)
    name = "chatservice_backend_duration_seconds_count"
    assert value(samples, name, backend="upstream") == 1
