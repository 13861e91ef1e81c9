"""Regressions of an adversarial pass, each through a real server (gunicorn, gevent worker):
the WebSocket backlog, one rate budget for every face, lone surrogates and non-finite
numbers, request bodies (chunked over the limit, slow), the memory state's eviction, and the
text log's control characters. The key pool's part lives in test_keypool.py.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from pathlib import Path

import pytest
import requests
import simple_websocket

from tests import test_ws
from tests.fakeupstream import Reply
from tests.test_ws import answer, ask, contents, receive

connect = test_ws.connect  # the WebSocket client fixture

MB = 1024 * 1024


def worker_pid(server) -> int:
    """The gunicorn worker of a one-worker live server."""
    deadline = time.monotonic() + 10
    while True:
        kids = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
        if kids.split():
            return int(kids.split()[0])
        assert time.monotonic() < deadline, "no worker"
        time.sleep(0.05)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --- WebSocket: bounded backlog (DoS), one budget with HTTP, a surrogate seq ---------------------


def test_a_websocket_flood_is_closed_with_a_policy_code_and_memory_stays_bounded(
    live_server, upstream, connect
):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(stall=8)  # the first frame's answer keeps the session busy
    pid = worker_pid(server)
    before = rss_mb(pid)
    ws = connect(server)
    frame = json.dumps({"seq": "s", "data": {"query": "x" * (900 * 1024)}})
    sent = 0
    with contextlib.suppress(simple_websocket.ConnectionClosed, OSError):
        for _ in range(400):
            ws.send(frame)
            sent += 1
    # The server stopped it long before 400 frames (360 MB) got in.
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        while True:
            ws.receive(timeout=10)
    assert closed.value.reason == 1008  # policy violation: too many frames waiting
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    assert rss_mb(pid) - before < 40
    assert "too many frames waiting" in server.log_text()


def test_websocket_frames_and_http_requests_share_one_budget(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x", MINUTE_LIMIT="5")
    answered = 0
    for i in range(3):
        answered += requests.post(server.url + "/api", json={"user_content": f"h{i}"}).ok
    ws = connect(server)  # the handshake is the fourth request
    for i in range(4):
        ask(ws, f"w{i}", query=f"w{i}")
    codes = []
    for _ in range(4):
        frames = answer(ws)
        codes.append(frames[-1]["code"])
    answered += codes.count(0)
    assert answered == 4 and codes == [0, 429, 429, 429]
    late = requests.post(server.url + "/api", json={"user_content": "late"})
    assert late.status_code == 429


def test_a_websocket_seq_with_a_lone_surrogate_gets_an_error_frame(live_server, connect):
    server = live_server(API_KEY="sk-x")
    ws = connect(server)
    ws.send('{"seq": "a\\ud800", "data": {"query": "hi"}}')
    frame = receive(ws)
    assert frame["code"] == 400 and frame["data"]["error"] == "invalid_character"
    assert frame["seq"] == "" and "'seq'" in frame["msg"]
    ask(ws, "next", query="hi")  # the socket keeps serving
    assert "".join(contents(answer(ws))) == "echo: hi"


# --- lone surrogates and non-finite numbers ------------------------------------------------------

SURROGATE_CASES = [
    ("/api", '{"user_content": "a\\ud800b"}', "user_content"),
    ("/api/v1/chat", '{"query": "hi", "model": "gpt\\udfff"}', "model"),
    (
        "/api/v1/chat/completions",
        '{"model": "m", "messages": [{"role": "user", "content": "x\\ud800"}]}',
        "messages[0].content",
    ),
    ("/api/chat-room", '{"content": "\\ud800"}', "content"),
    (
        "/api/chatgpt/createRolePlay",
        '{"human_name": "h", "ai_name": "a\\ud800", "prompt": "p"}',
        "ai_name",
    ),
    ("/api/chatgpt/createTurbo", '{"prompt": "\\udc00", "stream": false}', "prompt"),
]


@pytest.mark.parametrize(("path", "body", "field"), SURROGATE_CASES)
def test_a_lone_surrogate_from_the_client_is_a_400_naming_the_field(
    live_server, upstream, redis_url, path, body, field
):
    server = live_server(API_KEY="sk-x", SHARED_STATE_URL=redis_url)
    r = requests.post(
        server.url + path, data=body, headers={"Content-Type": "application/json"}, timeout=10
    )
    assert r.status_code == 400, r.text
    assert "invalid_character" in r.text or "invalid character" in r.text
    assert field in r.text
    assert "Traceback" not in server.log_text()
    assert upstream.received == []


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_a_400_naming_the_field(live_server, upstream, value):
    server = live_server(API_KEY="sk-x")
    for path, body in (
        ("/api", f'{{"user_content": "hi", "temperature": {value}}}'),
        ("/api/v1/chat/completions", f'{{"model": "m", "messages": [], "top_p": {value}}}'),
    ):
        r = requests.post(server.url + path, data=body, timeout=10)
        assert r.status_code == 400, r.text
        assert "not_finite" in r.text
    assert upstream.received == []


UPSTREAM_SURROGATE = '{"x": "ok \\ud800 end"}'


@pytest.mark.parametrize("stream", [False, True])
def test_a_lone_surrogate_from_the_upstream_is_replaced_on_every_face(
    live_server, upstream, redis_url, stream
):
    server = live_server(API_KEY="sk-x", SHARED_STATE_URL=redis_url)
    # The fake upstream writes json.dumps of its text: "\ud800" goes out escaped, valid JSON.
    upstream.default = Reply(text="ok \ud800 end")
    calls = [
        ("/api", {"user_content": "q", "stream": stream}),
        ("/api/v1/chat", {"query": "q", "stream": stream}),
        (
            "/api/v1/chat/completions",
            {"model": "m", "stream": stream, "messages": [{"role": "user", "content": "q"}]},
        ),
        ("/api/chat-room" + ("/stream" if stream else ""), {"content": "q"}),
    ]
    for path, body in calls:
        r = requests.post(server.url + path, json=body, timeout=10)
        assert r.status_code == 200, (path, r.text)
        assert "\ufffd" in r.text or "\\ufffd" in r.text, path
    conv = requests.post(server.url + "/api/chatgpt/createTurbo", data="p", timeout=10).text
    said = requests.post(
        server.url + "/api/chatgpt/chat", data="q", timeout=10, headers={"conversation": conv}
    )
    assert said.status_code == 200 and said.text == "ok \ufffd end"
    context = requests.post(
        server.url + "/api/chatgpt/context", timeout=10, headers={"conversation": conv}
    )
    assert "ok \ufffd end" in context.text  # the answer was kept
    # The chat room kept its answer too: the next turn sends it back upstream.
    requests.post(server.url + "/api/chat-room", json={"content": "again"}, timeout=10)
    history = upstream.received[-1].json["messages"]
    assert {"role": "assistant", "content": "ok \ufffd end"} in history
    assert "Traceback" not in server.log_text()


# --- request bodies: chunked over the limit, slow bodies -----------------------------------------


def chunked(size: int):
    piece = b'{"user_content": "' + b"x" * (64 * 1024)
    yield piece
    sent = len(piece)
    while sent < size:
        yield b"x" * (64 * 1024)
        sent += 64 * 1024
    yield b'"}'


@pytest.mark.parametrize("path", ["/api", "/api/chatgpt/chat", "/api/v1/chat/completions"])
def test_a_chunked_body_over_max_body_bytes_is_a_413(live_server, upstream, path):
    server = live_server(API_KEY="sk-x")
    r = requests.post(
        server.url + path, data=chunked(2 * MB), timeout=30, headers={"conversation": "whatever"}
    )
    assert r.status_code == 413, r.text[:200]
    assert "payload_too_large" in r.text or "1048576" in r.text
    small = requests.post(server.url + "/api", data=chunked(1000), timeout=10)
    assert small.status_code == 200  # a chunked body within the limit is fine
    assert upstream.received[-1].json["messages"][-1]["content"].startswith("xxx")


def test_a_slow_body_gets_a_408_and_its_connection_back(live_server):
    server = live_server(API_KEY="sk-x", BODY_READ_TIMEOUT="1", WORKER_CONNECTIONS="20")
    stalled = []
    for _ in range(15):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(
            b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        stalled.append(sock)
    # /healthz answers while they stall, and each stalled request gets a 408 and is closed.
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200
    for sock in stalled:
        answer_bytes = b""
        while chunk := sock.recv(65536):
            answer_bytes += chunk
        sock.close()
        head, _, body = answer_bytes.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), head
        assert json.loads(body)["data"]["error"] == "body_timeout"


# --- share links ---------------------------------------------------------------------------------


def test_a_share_id_shows_the_copy_but_never_opens_the_conversation(live_server, upstream):
    server = live_server(API_KEY="sk-x")
    base = server.url + "/api/chatgpt"
    conv = requests.post(base + "/createTurbo", data="be brief", timeout=10).text
    assert requests.post(base + "/chat", data="q1", headers={"conversation": conv}).ok
    stored = requests.post(base + "/store", headers={"conversation": conv}, timeout=10)
    assert stored.text == "保存成功"
    share_id = stored.headers["X-Share-Id"]
    assert share_id.startswith("sh_") and conv not in share_id
    shared = requests.get(f"{base}/share/{share_id}", timeout=10)
    assert shared.json() == {
        "Id": share_id,
        "Prompt": "be brief",
        "SentenceList": ["q1", "echo: q1"],
    }
    assert conv not in shared.text
    # Storing again keeps the same share id and refreshes the copy.
    requests.post(base + "/chat", data="q2", headers={"conversation": conv})
    again = requests.post(base + "/store", headers={"conversation": conv}, timeout=10)
    assert again.headers["X-Share-Id"] == share_id
    assert len(requests.get(f"{base}/share/{share_id}").json()["SentenceList"]) == 4
    # A share id is never a conversation id.
    for view in ("chat", "context", "contextArray", "finish", "store", "regenerate"):
        r = requests.post(f"{base}/{view}", data="q", headers={"conversation": share_id})
        assert r.status_code == 404, (view, r.text)
    # Alice ChatGPT's form still works by default.
    assert requests.get(f"{base}/share/{conv}").json()["Id"] == conv


def test_operators_can_turn_alice_chatgpts_share_form_off(live_server, upstream):
    server = live_server(API_KEY="sk-x", SHARE_BY_CONVERSATION_ID="0")
    base = server.url + "/api/chatgpt"
    conv = requests.post(base + "/createTurbo", data="p", timeout=10).text
    share_id = requests.post(base + "/store", headers={"conversation": conv}).headers["X-Share-Id"]
    assert requests.get(f"{base}/share/{conv}").status_code == 404
    assert requests.get(f"{base}/share/{share_id}").json()["Id"] == share_id


# --- conversations: turn locks after a killed worker, bounded size --------------------------


def test_a_turn_lock_is_renewed_while_the_turn_runs_and_freed_soon_after_a_killed_worker(
    live_server, upstream
):
    import os
    import signal
    import threading

    from chatservice.conversations import LOCK_TTL

    server = live_server(API_KEY="sk-x")
    base = server.url + "/api/chatgpt"
    conv = requests.post(base + "/createTurbo", data="p", timeout=10).text
    headers = {"conversation": conv}
    # A turn longer than the lock's TTL keeps its lock (it is renewed) ...
    upstream.push(Reply(delay=LOCK_TTL + 4))
    results = []
    turn = threading.Thread(
        target=lambda: results.append(requests.post(base + "/chat", data="slow", headers=headers))
    )
    turn.start()
    upstream.wait_for(1)
    time.sleep(LOCK_TTL + 1)  # past the lock's first lifetime, not a synchronization
    busy = requests.post(base + "/chat", data="meanwhile", headers=headers, timeout=10)
    assert busy.status_code == 409
    turn.join(30)
    assert results[0].status_code == 200
    # ... and a worker killed mid-turn frees the conversation within the TTL, not 430 s.
    upstream.push(Reply(stall=120))
    threading.Thread(
        target=_quiet_post, args=(base + "/chat", "doomed", headers), daemon=True
    ).start()
    upstream.wait_for(2)
    os.kill(worker_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + LOCK_TTL + 20
    while True:
        with contextlib.suppress(requests.RequestException):
            r = requests.post(base + "/chat", data="after", headers=headers, timeout=10)
            if r.status_code == 200:
                break
            assert r.status_code == 409, r.text
        assert time.monotonic() < deadline, "the conversation stayed locked"
        time.sleep(0.5)


def test_a_chat_room_lock_is_renewed_while_the_turn_runs_and_lapses_after_a_killed_worker(
    live_server, upstream, redis_url
):
    import os
    import signal
    import threading
    import uuid

    from chatservice.conversations import LOCK_TTL

    # Redis holds the room and its lock, so they outlive the killed worker.
    server = live_server(API_KEY="sk-x", SHARED_STATE_URL=redis_url)
    url = server.url + "/api/chat-room"
    headers = {"X-Room-Id": f"lock-{uuid.uuid4().hex}"}

    def post(content: str, timeout: float = 60) -> requests.Response:
        return requests.post(url, json={"content": content}, headers=headers, timeout=timeout)

    upstream.push(Reply(delay=LOCK_TTL + 4))
    results = []
    turn = threading.Thread(target=lambda: results.append(post("slow")))
    turn.start()
    upstream.wait_for(1)
    time.sleep(LOCK_TTL + 1)  # past the lock's first lifetime, not a synchronization
    busy = post("meanwhile", timeout=10)
    assert busy.status_code == 409 and busy.json()["error"] == "chat_room_busy"
    turn.join(30)
    assert results[0].status_code == 200
    upstream.push(Reply(stall=120))
    threading.Thread(
        target=_quiet_json_post, args=(url, {"content": "doomed"}, headers), daemon=True
    ).start()
    upstream.wait_for(2)
    os.kill(worker_pid(server), signal.SIGKILL)
    deadline = time.monotonic() + LOCK_TTL + 20
    while True:
        with contextlib.suppress(requests.RequestException):
            r = post("after", timeout=10)
            if r.status_code == 200:
                break
            assert r.status_code == 409, r.text
        assert time.monotonic() < deadline, "the room stayed locked"
        time.sleep(0.5)


def _quiet_json_post(url: str, body: dict, headers: dict[str, str]) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(url, json=body, headers=headers, timeout=200)


def _quiet_post(url: str, data: str, headers: dict[str, str]) -> None:
    with contextlib.suppress(requests.RequestException):
        requests.post(url, data=data, headers=headers, timeout=200)


def test_a_conversation_is_bounded_by_size_dropping_its_oldest_turns(live_server, upstream):
    server = live_server(API_KEY="sk-x", CONVERSATION_MAX_BYTES="300000")
    base = server.url + "/api/chatgpt"
    conv = requests.post(base + "/createTurbo", data="p", timeout=10).text
    headers = {"conversation": conv}
    for i in range(8):  # 8 turns of about 100 KB each way
        question = f"q{i} " + "x" * 50_000
        assert requests.post(base + "/chat", data=question, headers=headers, timeout=20).ok
    sentences = requests.post(base + "/contextArray", headers=headers, timeout=10).json()
    assert len(json.dumps(sentences)) < 300_000
    assert sentences[-2].startswith("q7 ") and sentences[-1].startswith("echo: q7 ")
    assert not any(s.startswith("q0 ") for s in sentences)
    assert requests.get(server.url + "/healthz", timeout=5).status_code == 200


# --- logs ---------------------------------------------------------------------------------


def test_a_model_name_cannot_forge_a_text_log_line(live_server, upstream):
    server = live_server(API_KEY="sk-x", LOG_FORMAT="text")
    forged = "gpt\n2026-01-01 00:00:00,000 INFO chatservice.access: FORGED\x1b[2J"
    r = requests.post(server.url + "/api/v1/chat", json={"query": "hi", "model": forged})
    assert r.status_code == 200
    deadline = time.monotonic() + 10
    while "FORGED" not in server.log_text():
        assert time.monotonic() < deadline, server.log_text()
        time.sleep(0.05)
    lines = server.log_text().splitlines()
    assert not any(line.startswith("2026-01-01") for line in lines)
    assert any("gpt\\n2026-01-01" in line and "\\x1b[2J" in line for line in lines)
    assert "\x1b" not in server.log_text()


# --- the SQLite store: readiness checks writing, start-up on an unwritable path -------------------


def test_readyz_fails_while_the_sqlite_store_cannot_be_written(live_server, tmp_path):
    import sqlite3

    server = live_server(API_KEY="sk-x")
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
    # Another process holds the write lock (a stuck writer): reads still work in WAL mode.
    blocker = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        r = requests.get(server.url + "/readyz", timeout=20)
        assert r.status_code == 503 and r.json()["checks"]["store"] == "unavailable"
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert requests.get(server.url + "/readyz", timeout=10).status_code == 200


def test_an_unwritable_store_url_stops_start_up_with_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, SETTING_NAMES, free_port

    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    env = {k: v for k, v in __import__("os").environ.items() if k not in SETTING_NAMES}
    env.update(HOST="127.0.0.1", PORT=str(free_port()), STORE_URL=f"sqlite:///{blocker}/store.db")
    done = subprocess.run(
        [sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    output = done.stdout + done.stderr
    assert f"STORE_URL: cannot write {blocker}/store.db" in output
    assert "Traceback" not in output


# --- the memory state frees expired entries and bounds its size ----------------------------------


def test_expired_chat_rooms_are_freed_from_memory(live_server, upstream):
    # A fixed mmap threshold: freed large strings go back to the system, so RSS shows it.
    server = live_server(
        API_KEY="sk-x",
        STORE_URL="memory://",
        CONVERSATION_TTL="10",
        MALLOC_MMAP_THRESHOLD_="131072",
        # A model with no known context window: 300,000-character turns are not trimmed.
        CHAT_MODEL="test-model-unbounded",
    )
    pid = worker_pid(server)
    before = rss_mb(pid)
    for i in range(40):  # rooms of about 600 KB (the turn and its echo)
        r = requests.post(
            server.url + "/api/chat-room",
            json={"content": "x" * 300_000},
            headers={"X-Room-Id": f"room-{i}"},
            timeout=20,
        )
        assert r.status_code == 200
    peak = rss_mb(pid)
    assert peak - before > 15
    time.sleep(10.5)  # past CONVERSATION_TTL of the last room (no synchronization)
    requests.post(
        server.url + "/api/chat-room", json={"content": "hi"}, headers={"X-Room-Id": "late"}
    )
    assert rss_mb(pid) < peak - 15  # freed without anyone reading those rooms again


def test_the_memory_state_keeps_at_most_memory_max_entries(live_server, upstream):
    server = live_server(API_KEY="sk-x", STORE_URL="memory://", MEMORY_MAX_ENTRIES="5")
    for room in ("a", "b", "c", "d", "e", "f", "g"):
        requests.post(
            server.url + "/api/chat-room", json={"content": room}, headers={"X-Room-Id": room}
        )
    requests.post(
        server.url + "/api/chat-room", json={"content": "again"}, headers={"X-Room-Id": "a"}
    )
    assert [m["content"] for m in upstream.received[-1].json["messages"][1:]] == ["again"]
    requests.post(
        server.url + "/api/chat-room", json={"content": "again"}, headers={"X-Room-Id": "g"}
    )
    assert [m["content"] for m in upstream.received[-1].json["messages"][1:]] == [
        "g",
        "echo: g",
        "again",
    ]


# --- gunicorn's own refusals ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "status", "key"),
    [
        (b"GET /" + b"a" * 4200 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
        (
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 120 + b"\r\n",
            431,
            "headers_too_large",
        ),
        (b"G@T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 400, "bad_request"),
    ],
)
def test_gunicorns_own_refusals_are_json(live_server, request_bytes, status, key):
    server = live_server(API_KEY="sk-x")
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode()), head
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["data"]["error"] == key


# Every other way JSON text can spell a lone surrogate or a non-finite number: the service
# tells most bodies apart from the text itself, and must never let one of these through.
SPELLINGS = [
    ('{"user_content": "a\ud800b"}'.encode("utf-8", "surrogatepass"), "invalid_character"),
    (b'{"user_content": "a\\uDBFFb"}', "invalid_character"),
    ('{"user_content": "a\ud800b"}'.encode("utf-16", "surrogatepass"), "invalid_character"),
    (b'{"user_content": "hi", "temperature": 1' + b"0" * 250 + b".5e99}", "not_finite"),
    (b'{"user_content": "hi", "temperature": 1e0400}', "not_finite"),
]


@pytest.mark.parametrize(("body", "key"), SPELLINGS)
def test_a_lone_surrogate_or_an_overflow_in_any_spelling_is_a_400(client, fake, body, key):
    r = client.post("/api", data=body, content_type="application/json")
    assert r.status_code == 400, r.data
    assert r.get_json()["data"]["error"] == key
    assert fake.received == []


def test_text_that_only_looks_unsafe_is_answered(client, fake):
    # A surrogate pair (an emoji, as ensure_ascii writes it) and "NaN" inside a string.
    body = b'{"user_content": "NaN Infinity \\ud83d\\ude00 1e999"}'
    r = client.post("/api", data=body, content_type="application/json")
    assert r.status_code == 200, r.data
    assert r.get_json()["data"]["response"] == "echo: NaN Infinity \U0001f600 1e999"


def test_a_lone_surrogate_in_the_upstream_bytes_is_replaced(client, fake):
    # The surrogate as UTF-8 bytes, not as an escape: json.loads still takes it.
    answer = {
        "id": "x",
        "object": "chat.completion",
        "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok \ud800 end"}}],
    }
    raw = json.dumps(answer, ensure_ascii=False).encode("utf-8", "surrogatepass")
    fake.push(Reply(raw_body=raw))
    messages = [{"role": "user", "content": "q"}]
    r = client.post("/api/v1/chat/completions", json={"model": "m", "messages": messages})
    assert r.status_code == 200, r.data
    assert r.get_json()["choices"][0]["message"]["content"] == "ok \ufffd end"
