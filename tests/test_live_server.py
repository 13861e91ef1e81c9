"""A real gunicorn/gevent server (``python3 app.py``) against the fake upstream on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from bench.procs import free_port as bench_free_port
from tests import conftest
from tests.fakeupstream import Reply


def read_events(response: requests.Response):
    """Yield (arrival time, payload) for each SSE event of a streamed response."""
    for line in response.iter_lines(chunk_size=1, decode_unicode=True):
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            yield time.monotonic(), payload if payload == "[DONE]" else json.loads(payload)


def test_stream_events_arrive_while_upstream_still_generates(live_server, upstream):
    server = live_server(API_KEY="sk-live")
    upstream.default = Reply(text="w1 w2 w3 w4 w5", chunk_delay=0.3)
    with requests.post(
        server.url + "/api/v1/chat", json={"query": "q", "stream": True}, stream=True, timeout=10
    ) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        stream = read_events(r)
        _, first = next(stream)
        record = upstream.wait_for(1)[0]
        # The first event reached us while the upstream was still writing the answer.
        assert record.finished is None
        assert first["data"]["response"] == "w1"
        rest = [payload for _, payload in stream]
    assert rest[-1] == "[DONE]"
    assert "".join(e["data"]["response"] for e in rest[:-1]) == " w2 w3 w4 w5"
    # The fake upstream marks itself finished just after its last byte: we may read first.
    record.wait_finished()


def test_client_disconnect_stops_the_upstream_request(live_server, upstream):
    server = live_server(API_KEY="sk-live")
    upstream.default = Reply(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.1)
    r = requests.post(
        server.url + "/api", json={"user_content": "q", "stream": True}, stream=True, timeout=10
    )
    next(read_events(r))
    r.close()  # the client goes away after the first event
    record = upstream.wait_for(1)[0]
    # The upstream saw its connection closed long before its 10 s answer was over.
    assert record.wait_finished() - record.started < 5 and record.client_gone


def test_hundred_simultaneous_requests_are_served_concurrently(live_server, upstream):
    server = live_server(API_KEY="sk-live")
    upstream.default = Reply(delay=1.0)
    session_count = 100

    def ask(i: int) -> int:
        r = requests.post(server.url + "/api", json={"user_content": f"q{i}"}, timeout=30)
        assert r.json()["current_response"] == f"echo: q{i}"
        return r.status_code

    started = time.monotonic()
    with ThreadPoolExecutor(session_count) as pool:
        statuses = list(pool.map(ask, range(session_count)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * session_count
    # Served one after another this would take 100 s; concurrently, about 1 s.
    assert elapsed < 10, elapsed


def test_request_api_keys_stay_with_their_requests_under_concurrency(live_server, upstream):
    server = live_server()  # no configured key: each request brings its own
    upstream.default = Reply(delay=0.3)

    def ask(i: int) -> None:
        r = requests.post(
            server.url + "/api",
            timeout=30,
            json={"user_content": f"caller-{i}", "api_key": f"sk-caller-{i}"},
        )
        assert r.status_code == 200

    with ThreadPoolExecutor(20) as pool:
        list(pool.map(ask, range(20)))
    received = upstream.wait_for(20)
    for record in received:
        caller = record.json["messages"][-1]["content"].removeprefix("caller-")
        assert record.headers["Authorization"] == f"Bearer sk-caller-{caller}"
    assert "sk-caller" not in server.log_text()


def test_server_log_has_no_secrets_or_prompts(live_server, upstream):
    server = live_server(API_KEY="sk-configured-secret")
    upstream.push(Reply(status=401, body={"error": {"message": "bad key sk-configured-secret"}}))
    requests.post(server.url + "/api", json={"user_content": "my private question"}, timeout=10)
    requests.post(
        server.url + "/api",
        json={"user_content": "another private question", "api_key": "sk-request-secret"},
        timeout=10,
    )
    log = server.log_text()
    # The only key drew a bare 401: ambiguous evidence, so the client gets the upstream's 401.
    assert "POST /api 401" in log and "POST /api 200" in log
    assert "upstream key sk-...cret suspended" in log  # masked
    for secret in ("sk-configured-secret", "sk-request-secret", "private question"):
        assert secret not in log


def test_gunicorn_command_line_serves_app_module(live_server, upstream):
    server = live_server(
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        "2",
        "-b",
        "127.0.0.1:{port}",
        "app:app",
        API_KEY="sk-x",
    )
    r = requests.post(server.url + "/api", json={"user_content": "hi"}, timeout=5)
    assert r.json()["current_response"] == "echo: hi"
    text = server.log_text()
    assert text.count("Booting worker") == 2
    assert "MonkeyPatchWarning" not in text and "Traceback" not in text


def test_workers_setting_starts_that_many_workers(live_server):
    server = live_server(WORKERS="2")
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    deadline = time.monotonic() + 10
    while server.log_text().count("Booting worker") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.log_text().count("Booting worker") == 2
    assert "MonkeyPatchWarning" not in server.log_text()


def test_local_preload_loads_the_model_at_start(live_server):
    server = live_server(BACKEND="local", LOCAL_PRELOAD="1")
    # Ready means the worker is serving: with preload the model was loaded before that.
    assert "embedded model loaded" in server.log_text()


def test_disconnect_stops_local_generation(live_server):
    server = live_server(BACKEND="local", LOCAL_MAX_QUEUE="0")
    body = {"query": "Write a long story about a dragon.", "max_tokens": 2000, "stream": True}
    r = requests.post(server.url + "/api/v1/chat", json=body, stream=True, timeout=30)
    next(read_events(r))
    r.close()
    # Generating 2000 tokens takes ~20 s; a stopped generation frees the model at once.
    deadline = time.monotonic() + 5
    while True:
        status = requests.post(
            server.url + "/api", json={"user_content": "hi", "max_tokens": 2}, timeout=10
        ).status_code
        if status == 200 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert status == 200


class _Healthy(http.server.BaseHTTPRequestHandler):
    """Answers 200 to everything: a stranger's server on the port a test was given."""

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args) -> None:
        pass


def test_a_server_whose_port_another_process_took_starts_again_on_another(live_server, monkeypatch):
    """Two ``free_port()`` calls can name the same port before either binds it. The other
    holder's answers on it are not taken for this server's, which starts again elsewhere."""
    stranger = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=stranger.serve_forever, daemon=True).start()
    taken = stranger.server_address[1]
    ports = iter([taken])
    monkeypatch.setattr(conftest, "free_port", lambda: next(ports, None) or bench_free_port())
    try:
        server = live_server()
    finally:
        stranger.shutdown()
        stranger.server_close()
    assert server.port != taken
    assert "Connection in use" not in server.log_text()
    answer = requests.get(server.url + "/healthz", timeout=5)
    assert answer.status_code == 200 and answer.json()["status"] == "ok"
