"""The access log and the log files in LOG_DIR.

Flask's test client for the access record's fields; the standard library's handlers for
rotation and retention; processes appending across the master's rotations; and real
``python3 app.py`` servers for the files one and two gevent workers leave in LOG_DIR.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests
import simple_websocket

from chatservice import access_log, logs
from tests.conftest import ROOT, free_port
from tests.fakeupstream import Reply

CONFIGURED_KEY = "sk-configured-secret-9f8e7d6c"
REQUEST_KEY = "sk-request-secret-1a2b3c4d"
BEARER_KEY = "sk-bearer-secret-5e6f7a8b"
PROMPT = "my private question 4711"
HEX_ID = re.compile(r"[0-9a-f]{32}")


class AccessRecords(logging.Handler):
    """Collects the access records of the app under test."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def by_id(self, request_id: str) -> list[dict[str, Any]]:
        lines = [getattr(r, "access") for r in self.records]  # noqa: B009 - set by extra=
        return [line for line in lines if line["request_id"] == request_id]

    def last(self) -> dict[str, Any]:
        return getattr(self.records[-1], "access")  # noqa: B009


@pytest.fixture
def access() -> Iterator[AccessRecords]:
    handler = AccessRecords()
    access_log.access_log.addHandler(handler)
    yield handler
    access_log.access_log.removeHandler(handler)


def usage_stream(text: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    """An upstream SSE body: text chunks, the finish chunk, a usage-only chunk, ``[DONE]``."""

    def event(payload: dict[str, Any]) -> bytes:
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    base = {"id": "c1", "object": "chat.completion.chunk", "model": "gpt-4o-mini-2024-07-18"}
    body = b"".join(
        event({**base, "choices": [{"index": 0, "delta": {"content": word}}]})
        for word in text.split(" ")
    )
    body += event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens}
    body += event({**base, "choices": [], "usage": usage})
    return body + b"data: [DONE]\n\n"


# --- the access record ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("req-42.A_b", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        (None, False),
    ],
)
def test_request_id_is_taken_when_sane_else_generated(make_app, access, given, kept):
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    headers = {"X-Request-ID": given} if given is not None else {}
    response = client.get("/healthz", headers=headers, buffered=True)
    answered = response.headers["X-Request-ID"]
    if kept:
        assert answered == given
    else:
        assert HEX_ID.fullmatch(answered)
    assert access.last()["request_id"] == answered


def test_whole_answers_record_face_route_model_tokens_and_backend(make_app, access, fake):
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    calls = [
        ("api", "/api", {"user_content": "one two", "model": "gpt-4o-mini"}),
        ("chat", "/api/v1/chat", {"query": "one two", "model": "gpt-4o-mini"}),
        (
            "openai_api",
            "/api/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "one two"}]},
        ),
        ("chatroom", "/api/chat-room", {"content": "one two"}),
        ("conversations", "/api/chatgpt/quickAnswer", {"question": "one two"}),
    ]
    for index, (face, route, body) in enumerate(calls):
        rid = f"face-{index}"
        response = client.post(route, json=body, headers={"X-Request-ID": rid}, buffered=True)
        assert response.status_code == 200, response.get_data(as_text=True)
        [line] = access.by_id(rid)
        model = body.get("model", "gpt-3.5-turbo")  # the chat room's default model
        # The fake's answer is "echo: one two": 3 words; it counts 5 prompt tokens.
        tokens = (5, 3)
        assert line == {
            "request_id": rid,
            "face": face,
            "route": route,
            "method": "POST",
            "status": 200,
            "duration_ms": line["duration_ms"],
            "ip": "127.0.0.1",
            "model": model,
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "backend": "upstream",
            "usage": "reported",
        }
        assert isinstance(line["duration_ms"], float) and line["duration_ms"] >= 0


def test_route_is_the_url_rule_and_unrouted_paths_have_none(make_app, access):
    client = make_app().test_client()
    client.get("/api/chatgpt/share/abc123def", headers={"X-Request-ID": "conv"}, buffered=True)
    [line] = access.by_id("conv")
    assert line["face"] == "conversations"
    assert line["route"] == "/api/chatgpt/share/<share_id>"  # the rule, not the shared id
    client.get("/no/such/path", headers={"X-Request-ID": "nothing"}, buffered=True)
    [line] = access.by_id("nothing")
    assert (line["face"], line["route"], line["status"]) == (None, None, 404)


def test_rate_limited_request_is_logged_with_its_429(make_app, access):
    client = make_app(API_KEY=CONFIGURED_KEY, MINUTE_LIMIT="1").test_client()
    client.post(
        "/api", json={"user_content": "a"}, headers={"X-Request-ID": "first"}, buffered=True
    )
    refused = client.post(
        "/api", json={"user_content": "b"}, headers={"X-Request-ID": "second"}, buffered=True
    )
    assert refused.status_code == 429 and refused.headers["X-Request-ID"] == "second"
    [line] = access.by_id("second")
    assert (line["status"], line["face"], line["model"]) == (429, "api", None)


def test_stream_is_logged_when_it_ends_with_the_usage_chunk_tokens(make_app, access, fake):
    fake.push(Reply(raw_stream=usage_stream("alpha beta gamma", 11, 3)))
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    response = client.post(
        "/api/v1/chat/completions", json=body, headers={"X-Request-ID": "s1"}, buffered=False
    )
    assert response.status_code == 200
    assert access.by_id("s1") == []  # the stream is still open: no line yet
    text = b"".join(response.response).decode()
    response.close()
    assert text.endswith("data: [DONE]\n\n")
    [line] = access.by_id("s1")
    assert line["prompt_tokens"] == 11 and line["completion_tokens"] == 3
    assert line["model"] == "gpt-4o-mini-2024-07-18"  # the model that answered
    assert (line["backend"], line["route"], line["status"]) == (
        "upstream",
        "/api/v1/chat/completions",
        200,
    )
    assert "aborted" not in line and "error" not in line


def test_stream_broken_midway_records_the_error_key(make_app, access, fake):
    fake.push(Reply(text="a b c d", drop_after=2))
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    response = client.post(
        "/api/v1/chat",
        json={"query": "q", "stream": True},
        headers={"X-Request-ID": "broken"},
        buffered=True,
    )
    assert '"upstream_interrupted"' in response.get_data(as_text=True)
    [line] = access.by_id("broken")
    assert (line["status"], line["error"]) == (200, "upstream_interrupted")


def test_client_leaving_a_stream_is_logged_as_aborted(make_app, access, fake):
    fake.push(Reply(text="a b c d e f", chunk_delay=0.05))
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    response = client.post(
        "/api/v1/chat",
        json={"query": "q", "stream": True},
        headers={"X-Request-ID": "left"},
        buffered=False,
    )
    next(iter(response.response))
    response.close()
    [line] = access.by_id("left")
    assert line["aborted"] is True


def test_embedded_model_answers_are_recorded_as_local(make_app, access):
    client = make_app(BACKEND="local").test_client()
    response = client.post(
        "/api",
        json={"user_content": "Hi", "max_tokens": 2},
        headers={"X-Request-ID": "loc"},
        buffered=True,
    )
    assert response.status_code == 200
    [line] = access.by_id("loc")
    assert line["backend"] == "local" and line["model"] == "smollm2-135m-instruct"
    assert line["prompt_tokens"] > 0 and 0 < line["completion_tokens"] <= 2


def test_text_and_json_lines(make_app, access):
    client = make_app(API_KEY=CONFIGURED_KEY).test_client()
    client.post("/api", json={"user_content": "x"}, headers={"X-Request-ID": "fmt"}, buffered=True)
    record = access.records[-1]
    text = logs.LineFormatter(json_lines=False).format(record)
    assert re.search(
        r" INFO chatservice\.access: POST /api 200 \d+\.\dms id=fmt face=api ip=127\.0\.0\.1 "
        r"model=gpt-3\.5-turbo tokens=5/2 backend=upstream usage=reported$",
        text,
    ), text
    line = json.loads(logs.LineFormatter(json_lines=True).format(record))
    assert list(line) == ["time", *access_log.FIELDS, "usage", "pid"]
    assert line["request_id"] == "fmt" and line["completion_tokens"] == 2
    app_record = logging.LogRecord("chatservice.x", logging.WARNING, "f", 1, "a %s", ("b",), None)
    assert json.loads(logs.LineFormatter(json_lines=True).format(app_record))["message"] == "a b"


# --- rotation and retention -------------------------------------------------------------------


def test_file_rotates_when_the_date_changes_and_keeps_retention_days(tmp_path):
    handler = logs.file_handler(str(tmp_path), "access.log", retention_days=2, json_lines=True)
    day = 86400
    now = int(time.time())
    try:
        handler.handle(logging.makeLogRecord({"name": "t", "msg": "line 0"}))
        for index in range(1, 6):
            # The clock the handler checks: its next midnight is already past, as if a day
            # had gone by since the previous line (another day each time).
            handler.rolloverAt = now - (6 - index) * day
            handler.handle(logging.makeLogRecord({"name": "t", "msg": f"line {index}"}))
    finally:
        handler.close()
    current = tmp_path / "access.log"
    rotated = sorted(p for p in tmp_path.iterdir() if p != current)
    # Five rollovers; only the two newest rotated files are kept, each holding its day's line.
    assert [p.name for p in rotated] == [
        "access.log." + time.strftime("%Y-%m-%d", time.localtime(now - n * day)) for n in (3, 2)
    ]
    assert [json.loads(p.read_text())["message"] for p in rotated] == ["line 3", "line 4"]
    assert json.loads(current.read_text())["message"] == "line 5"


# --- every process appends, the master rotates ------------------------------------------------

#: A worker of the test below: gevent-patched like a gunicorn worker, two greenlets and one real
#: thread (as the embedded model's pool) appending access records with the writing-only handler
#: until the stop file exists; every 50th record is 100 KiB. Prints how many each one wrote.
WRITER = """
import sys
from gevent import monkey
monkey.patch_all()
import gevent, logging, os
from chatservice import logs
log_dir, stop, name = sys.argv[1:]
files = logs.LogFiles.open(log_dir, 10, True, rotate=False)
counts = {}

def write(who, pause):
    n = 0
    while not os.path.exists(stop):
        pad = "y" * (100 * 1024 if n % 50 == 0 else 3000)
        record = logging.LogRecord("chatservice.access", logging.INFO, "f", 1, "x", None, None)
        record.access = {"request_id": f"{name}-{who}-{n}", "pad": pad}
        files.access.handle(record)
        n += 1
        pause()
    counts[who] = n

workers = [gevent.spawn(write, w, lambda: gevent.sleep(0)) for w in ("g1", "g2")]
pool = gevent.get_hub().threadpool
thread = pool.spawn(write, "t", lambda: None)
gevent.joinall(workers)
thread.get()
files.close()
print(" ".join(f"{who}={n}" for who, n in counts.items()))
"""


def writers_seen(path: Path) -> set[str]:
    """The writers (``w0``...) with a line in ``path`` so far (a line being written is skipped:
    a reader may see part of a write in progress)."""
    seen = set()
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            seen.add(json.loads(line)["request_id"][:2])
    return seen


def test_workers_appending_across_rotations_lose_and_tear_no_line(tmp_path):
    """Three processes append (greenlets and a real thread each) while this one, as the
    master, rotates three times: every line is whole and in exactly one file."""
    log_dir, stop = tmp_path / "logs", tmp_path / "stop"
    log_dir.mkdir()
    rotator = logs.file_handler(str(log_dir), "access.log", retention_days=10, json_lines=True)
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(log_dir), str(stop), f"w{i}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    day, now = 86400, int(time.time())
    try:
        for rotation in range(3):
            # Rotate once the current file has lines of every writer: rotations happen while
            # they write. Each rotation is dated another day, as if a day had gone by.
            deadline = time.monotonic() + 60
            while len(writers_seen(log_dir / "access.log")) < 3:
                assert time.monotonic() < deadline, "the writers did not write"
                assert all(w.poll() is None for w in writers)
                time.sleep(0.05)
            rotator.rolloverAt = now - (4 - rotation) * day
            rotator.rotate_if_due()
        deadline = time.monotonic() + 60
        while len(writers_seen(log_dir / "access.log")) < 3:
            assert time.monotonic() < deadline, "a writer did not reopen the new file"
            time.sleep(0.05)
    finally:
        stop.touch()
        outputs = [w.communicate(timeout=60)[0] for w in writers]
        rotator.close()
    assert [w.returncode for w in writers] == [0, 0, 0]
    files = sorted(log_dir.glob("access.log*"))
    assert len(files) == 4  # access.log and three rotated days
    seen: list[str] = []
    for path in files:
        seen += [line["request_id"] for line in read_lines(path)]  # a torn line fails here
    expected = [
        f"w{i}-{who}-{n}"
        for i, output in enumerate(outputs)
        for who, count in (item.split("=") for item in output.split())
        for n in range(int(count))
    ]
    assert len(expected) > 4 * 3 * 3
    assert sorted(seen) == sorted(expected)  # each line once: none lost, none doubled


#: A worker's stderr logging: the handler made before gevent's patch (as gunicorn's master
#: makes it), then two greenlets and one real thread logging 300 lines each through it.
STDERR_WRITER = """
import logging, sys
from chatservice import logs
handler = logs.StderrHandler()
handler.setFormatter(logging.Formatter("%(message)s"))
from gevent import monkey
monkey.patch_all()
import gevent
log = logging.getLogger("chatservice.stderr-test")
log.addHandler(handler)
log.setLevel(logging.INFO)
log.propagate = False

def write(who, pause):
    for n in range(300):
        log.info("%s-%d", who, n)
        pause()

workers = [gevent.spawn(write, w, lambda: gevent.sleep(0)) for w in ("g1", "g2")]
thread = gevent.get_hub().threadpool.spawn(write, "t", lambda: None)
gevent.joinall(workers, raise_error=True)
thread.get()
"""


def test_stderr_lines_of_greenlets_and_a_thread_all_arrive_after_gevents_patch():
    """The stderr handler keeps a native lock through gevent's patch: greenlets and a real
    thread logging at once all get their lines out, none lost or torn, and nothing hangs."""
    done = subprocess.run(
        [sys.executable, "-c", STDERR_WRITER], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    expected = [f"{who}-{n}" for who in ("g1", "g2", "t") for n in range(300)]
    assert sorted(lines) == sorted(expected)


def test_master_rotates_at_midnight_without_writing(tmp_path):
    """The master's timer rotates a file last written before midnight (a restart the next
    day, or a master with nothing to say) without waiting for the master's next line."""
    (tmp_path / "access.log").write_text('{"message": "yesterday"}\n')
    two_days_ago = time.time() - 2 * 86400
    os.utime(tmp_path / "access.log", (two_days_ago, two_days_ago))
    files = logs.LogFiles.open(str(tmp_path), retention_days=3, json_lines=True, rotate=True)
    rotated = tmp_path / ("access.log." + time.strftime("%Y-%m-%d", time.localtime(two_days_ago)))
    try:
        deadline = time.monotonic() + 15
        while not rotated.exists():
            assert time.monotonic() < deadline, "no rotation"
            time.sleep(0.05)
    finally:
        files.close()
    assert read_lines(rotated) == [{"message": "yesterday"}]
    assert (tmp_path / "access.log").read_text() == ""


def test_unusable_log_dir_is_refused_and_the_open_files_stay(tmp_path):
    files = logs.LogFiles.open(str(tmp_path / "logs"), 3, json_lines=False, rotate=True)
    try:
        blocker = tmp_path / "file"
        blocker.write_text("")
        for rotate in (True, False):
            with pytest.raises(logs.ConfigError, match="^LOG_DIR: "):
                logs.LogFiles.open(str(blocker / "logs"), 3, json_lines=False, rotate=rotate)
        files.app.handle(logging.makeLogRecord({"name": "chatservice.t", "msg": "still here"}))
    finally:
        files.close()
    assert "still here" in (tmp_path / "logs" / "app.log").read_text()


# --- real servers -----------------------------------------------------------------------------


def read_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON log file, parsed (a torn or interleaved line fails here)."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_for_ids(path: Path, ids: set[str], timeout: float = 15.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while True:
        lines = read_lines(path)
        if ids <= {line.get("request_id") for line in lines} or time.monotonic() > deadline:
            return lines
        time.sleep(0.1)


def test_log_dir_holds_json_access_and_app_logs_without_secrets(live_server, upstream, tmp_path):
    log_dir = tmp_path / "logs"
    server = live_server(API_KEY=CONFIGURED_KEY, LOG_DIR=str(log_dir), LOG_FORMAT="json")
    answer = requests.post(
        server.url + "/api",
        json={"user_content": PROMPT, "api_key": REQUEST_KEY},
        headers={"X-Request-ID": "given-id.1"},
        timeout=10,
    )
    assert answer.headers["X-Request-ID"] == "given-id.1"
    bearer = requests.post(
        server.url + "/api/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}]},
        headers={"Authorization": f"Bearer {BEARER_KEY}", "X-Request-ID": "bearer"},
        timeout=10,
    )
    assert bearer.status_code == 200 and answer.status_code == 200

    # A slow stream: its line is written when it ends, with the time it took.
    upstream.push(Reply(text="w1 w2 w3 w4 w5", chunk_delay=0.3))
    with requests.post(
        server.url + "/api/v1/chat",
        json={"query": PROMPT, "stream": True},
        headers={"X-Request-ID": "slow"},
        stream=True,
        timeout=10,
    ) as streamed:
        lines = streamed.iter_lines()
        assert next(lines).startswith(b"data: ")
        # A request made while the stream goes on: once its line is in the file, a line the
        # stream had written at its start would be there too.
        marker = requests.get(server.url + "/healthz", headers={"X-Request-ID": "mark"}, timeout=10)
        assert marker.status_code == 200
        written = wait_for_ids(log_dir / "access.log", {"mark"})
        assert "mark" in {line["request_id"] for line in written}
        assert "slow" not in {line["request_id"] for line in written}
        assert [line for line in lines if line][-1] == b"data: [DONE]"
    upstream.push(Reply(raw_stream=usage_stream("a b c", 7, 3)))
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "q"}]}
    requests.post(
        server.url + "/api/v1/chat/completions",
        json=body,
        headers={"X-Request-ID": "usage"},
        timeout=10,
    ).raise_for_status()

    socket = simple_websocket.Client.connect(
        f"ws://127.0.0.1:{server.port}/api/ws", headers={"X-Request-ID": "socket"}
    )
    try:
        socket.send(json.dumps({"seq": "1", "data": {"query": PROMPT}}))
        assert json.loads(socket.receive(timeout=10))["code"] == 0
    finally:
        socket.close()

    ids = {"given-id.1", "bearer", "slow", "usage", "socket"}
    access = {line["request_id"]: line for line in wait_for_ids(log_dir / "access.log", ids)}
    first = access["given-id.1"]
    assert {k: first[k] for k in ("face", "route", "method", "status", "ip", "backend")} == {
        "face": "api",
        "route": "/api",
        "method": "POST",
        "status": 200,
        "ip": "127.0.0.1",
        "backend": "upstream",
    }
    assert (first["model"], first["prompt_tokens"], first["completion_tokens"]) == (
        "gpt-3.5-turbo",
        5,
        5,
    )
    assert access["bearer"]["face"] == "openai_api"
    assert access["slow"]["duration_ms"] >= 1200  # five chunks 0.3 s apart: measured at the end
    assert (access["usage"]["prompt_tokens"], access["usage"]["completion_tokens"]) == (7, 3)
    # A WebSocket session is one line when it closes: its handshake's 101.
    assert {k: access["socket"][k] for k in ("face", "route", "method", "status")} == {
        "face": "ws",
        "route": "/api/ws",
        "method": "GET",
        "status": 101,
    }
    # The same lines reach stdout/stderr as before.
    assert '"request_id": "given-id.1"' in server.log_text()

    server.stop()  # SIGQUIT: the master writes what its worker sent, then closes the files
    app_log = read_lines(log_dir / "app.log")
    messages = [line["message"] for line in app_log]
    worker = first["pid"]
    assert any(m.startswith("Listening at:") for m in messages)  # the master's own line
    assert f"Booting worker with pid: {worker}" in messages  # sent by the worker
    assert f"Worker exiting (pid: {worker})" in messages  # its very last line
    assert messages[-1] == "Shutting down: Master"
    for path in log_dir.iterdir():
        text = path.read_text()
        for secret in (CONFIGURED_KEY, REQUEST_KEY, BEARER_KEY, PROMPT):
            assert secret not in text, (path.name, secret)
    output = server.log_path.read_text()  # stdout and stderr, closed by stop()
    for secret in (CONFIGURED_KEY, REQUEST_KEY, BEARER_KEY, PROMPT):
        assert secret not in output


def test_two_workers_lines_all_arrive_whole(live_server, upstream, tmp_path):
    log_dir = tmp_path / "logs"
    server = live_server(
        API_KEY=CONFIGURED_KEY, LOG_DIR=str(log_dir), LOG_FORMAT="json", WORKERS="2"
    )
    access_log = log_dir / "access.log"
    # Both workers serving: keep asking until each has written a line.
    deadline = time.monotonic() + 30
    warm = 0
    while len({line["pid"] for line in read_lines(access_log)}) < 2:
        assert time.monotonic() < deadline, "the second worker never served"
        requests.get(server.url + "/healthz", headers={"X-Request-ID": f"warm-{warm}"}, timeout=5)
        warm += 1
        time.sleep(0.05)

    upstream.default = Reply(delay=0.2)
    count = 200
    ids = {f"burst-{i}" for i in range(count)}

    def ask(i: int) -> int:
        r = requests.post(
            server.url + "/api/v1/chat",
            json={"query": f"question {i} " + "pad " * 50},
            headers={"X-Request-ID": f"burst-{i}"},
            timeout=60,
        )
        return r.status_code

    with ThreadPoolExecutor(count) as pool:
        statuses = list(pool.map(ask, range(count)))
    assert statuses == [200] * count

    lines = wait_for_ids(access_log, ids)  # every line parses as JSON, or this raises
    burst = [line for line in lines if line["request_id"] in ids]
    assert sorted(line["request_id"] for line in burst) == sorted(ids)  # each exactly once
    assert len({line["pid"] for line in burst}) == 2, "both workers wrote during the burst"
    assert all(line["status"] == 200 and line["completion_tokens"] for line in burst)
    assert len({line["request_id"] for line in lines}) == len(lines)  # no line twice
    assert {f"warm-{n}" for n in range(warm)} <= {line["request_id"] for line in lines}
    assert all(line["message"] for line in read_lines(log_dir / "app.log"))


def test_nohup_with_output_discarded_leaves_complete_logs(tmp_path, upstream):
    """chatgpt-service's way to run it: ``nohup python3 app.py >/dev/null 2>&1 &``, then SIGTERM."""
    log_dir = tmp_path / "logs"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(
        HOST="127.0.0.1",
        PORT=str(port),
        UPSTREAM_BASE_URL=upstream.url,
        STORE_URL="memory://",
        API_KEY=CONFIGURED_KEY,
        LOG_DIR=str(log_dir),
        LOG_PROMPTS="1",  # prompts are logged only when asked for
    )
    upstream.reset()
    proc = subprocess.Popen(
        ["nohup", sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.post(
                    f"http://127.0.0.1:{port}/api",
                    json={"user_content": PROMPT},
                    headers={"X-Request-ID": "nohup-1"},
                    timeout=10,
                )
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.1)
        assert answer.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)  # graceful: the worker finishes, then the master
        proc.wait(timeout=30)
    [line] = (log_dir / "access.log").read_text().splitlines()
    assert "POST /api 200 " in line and "id=nohup-1 face=api" in line and "tokens=5/5" in line
    app_log = (log_dir / "app.log").read_text()
    assert PROMPT in app_log and CONFIGURED_KEY not in app_log
    assert "Worker exiting" in app_log
    assert app_log.splitlines()[-1].endswith("Shutting down: Master")


def ids_in(path: Path) -> dict[str, int]:
    """request id -> pid of every access line in ``path`` so far (a line being written is
    skipped)."""
    found = {}
    for line in path.read_text().splitlines() if path.exists() else []:
        with contextlib.suppress(ValueError):
            fields = json.loads(line)
            found[fields["request_id"]] = fields["pid"]
    return found


def until_both_workers_wrote(server: Any, path: Path, prefix: str) -> set[str]:
    """Ask ``/healthz`` (ids ``prefix-0``, ...) until lines of two processes are in ``path``;
    the ids asked."""
    asked: set[str] = set()
    deadline = time.monotonic() + 60
    while len({pid for rid, pid in ids_in(path).items() if rid.startswith(prefix)}) < 2:
        assert time.monotonic() < deadline, f"no lines of two workers in {path}"
        rid = f"{prefix}-{len(asked)}"
        # Long: after a reload, new workers answer once they have booted.
        requests.get(server.url + "/healthz", headers={"X-Request-ID": rid}, timeout=30)
        asked.add(rid)
    return asked


def test_bare_gunicorn_workers_write_log_dir_and_follow_a_logrotate(live_server, tmp_path):
    """``gunicorn -k gevent app:app`` has no master of ours: its workers write LOG_DIR and
    nothing here rotates; after logrotate's rename each worker writes the new file."""
    log_dir = tmp_path / "logs"
    server = live_server(
        "-m", "gunicorn", "-k", "gevent", "-w", "2", "-b", "127.0.0.1:{port}", "app:app",
        LOG_DIR=str(log_dir), LOG_FORMAT="json",
    )  # fmt: skip
    current = log_dir / "access.log"
    before = until_both_workers_wrote(server, current, "before")
    current.rename(log_dir / "access.log.1")  # logrotate's default: rename, then a new file
    after = until_both_workers_wrote(server, current, "after")
    server.stop()
    old_ids = [line["request_id"] for line in read_lines(log_dir / "access.log.1")]
    new_ids = [line["request_id"] for line in read_lines(current)]
    assert sorted(rid for rid in old_ids if rid.startswith("before")) == sorted(before)
    assert sorted(new_ids) == sorted(after)


def test_reload_moving_log_dir_sends_new_lines_to_the_new_folder(tmp_path, upstream):
    from tests.test_reload import EnvFileServer

    first, second = tmp_path / "first", tmp_path / "second"
    folder = tmp_path / "service"
    folder.mkdir()
    base = {"UPSTREAM_BASE_URL": upstream.url, "STORE_URL": "memory://", "LOG_FORMAT": "json"}
    server = EnvFileServer(folder, {**base, "LOG_DIR": str(first), "WORKERS": "2"})
    try:
        server.wait_ready()
        before = until_both_workers_wrote(server, first / "access.log", "before")
        server.write_env({**base, "LOG_DIR": str(second), "WORKERS": "2"})
        server.hang_up()
        # The old workers may answer a little longer (into the first folder); then new ones.
        after = until_both_workers_wrote(server, second / "access.log", "after")
    finally:
        server.stop()
    in_first = {line["request_id"] for line in read_lines(first / "access.log")}
    in_second = {line["request_id"] for line in read_lines(second / "access.log")}
    assert before <= in_first
    # Every answered request has its line, in one folder only (old workers: the first).
    assert (before | after) <= (in_first | in_second) and not in_first & in_second
    messages = [line["message"] for line in read_lines(second / "app.log")]
    assert "configuration reloaded; new workers use it" in messages  # the master's line
    assert any(m.startswith("Booting worker with pid:") for m in messages)  # a new worker's
