"""The WebSocket face of chatgpt-websocket (``/api/ws``), against real servers.

Every test starts ``python3 app.py`` (gunicorn, gevent workers) and talks to it with a real
WebSocket client (simple-websocket); the answers come from the fake upstream or, in one test,
the embedded model.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
import simple_websocket

from tests.fakeupstream import Reply
from tests.test_ops import parse

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = {
    lang: json.loads((ROOT / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh_CN", "zh_TW", "ru")
}
SLOW_TEXT = "Hello there. How are you? Fine"
CONSUME_TIME = re.compile(r"^\d+\.\d\d$")


@pytest.fixture
def connect() -> Iterator[Callable[..., simple_websocket.Client]]:
    """Open WebSocket clients to a live server; all are closed after the test."""
    clients: list[simple_websocket.Client] = []

    def open_socket(server: Any, query: str = "", **kwargs: Any) -> simple_websocket.Client:
        url = f"ws://127.0.0.1:{server.port}/api/ws{query}"
        client = simple_websocket.Client.connect(url, **kwargs)
        clients.append(client)
        return client

    yield open_socket
    for client in clients:
        with contextlib.suppress(Exception):
            client.close()


def ask(ws: simple_websocket.Client, seq: str, **data: Any) -> None:
    ws.send(json.dumps({"seq": seq, "data": data}))


def receive(ws: simple_websocket.Client, timeout: float = 10) -> dict[str, Any]:
    raw = ws.receive(timeout=timeout)
    assert raw is not None, "no frame within the timeout"
    return json.loads(raw)


def answer(ws: simple_websocket.Client, timeout: float = 10) -> list[dict[str, Any]]:
    """The frames of one answer, up to the one with finish_reason set."""
    frames = [receive(ws, timeout)]
    while frames[-1]["data"]["finish_reason"] is None:
        frames.append(receive(ws, timeout))
    return frames


def contents(frames: list[dict[str, Any]]) -> list[str]:
    return [frame["data"]["contents"] for frame in frames]


def assert_error(frame: dict[str, Any], code: int, key: str, seq: str) -> None:
    assert frame["code"] == code, frame
    assert frame["seq"] == seq
    assert frame["data"]["error"] == key
    assert frame["data"]["finish_reason"] == "stop" and frame["data"]["contents"] == ""
    assert CONSUME_TIME.match(frame["data"]["consume_time"])
    assert frame["msg"] and "Traceback" not in frame["msg"]


def test_origin_stream_sends_each_piece_while_the_upstream_streams(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(text=SLOW_TEXT, chunk_delay=0.2)
    ws = connect(server)
    ask(ws, "s-1", query="hi", origin_stream=True)

    first = receive(ws)
    # The first piece is here while the upstream is still streaming the rest (about 1.2 s).
    assert upstream.wait_for(1)[0].finished is None
    frames = [first, *answer(ws)] if first["data"]["finish_reason"] is None else [first]

    assert all(frame["code"] == 0 and frame["msg"] == "ok" for frame in frames)
    assert all(frame["seq"] == "s-1" for frame in frames)
    assert "".join(contents(frames)) == SLOW_TEXT
    assert contents(frames)[:6] == ["Hello", " there.", " How", " are", " you?", " Fine"]
    assert [frame["data"]["finish_reason"] for frame in frames[:-1]] == [None] * (len(frames) - 1)
    assert frames[-1]["data"]["finish_reason"] == "stop"
    times = [frame["data"]["consume_time"] for frame in frames]
    assert all(CONSUME_TIME.match(value) for value in times), times
    assert [float(value) for value in times] == sorted(float(value) for value in times)
    assert float(times[0]) < 0.8 and float(times[-1]) >= 1.0, times
    # Only the model and the question went upstream, streamed (openai_parameter defaults true).
    sent = upstream.received[0].json
    assert sent["stream"] is True and sent["messages"] == [{"role": "user", "content": "hi"}]


def test_sentence_mode_sends_whole_sentences(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(text=SLOW_TEXT, chunk_delay=0.1)
    ws = connect(server)
    ask(ws, "s-2", query="hi", origin_stream=False)
    frames = answer(ws)
    assert contents(frames) == ["Hello there.", " How are you?", " Fine"]
    assert [frame["data"]["finish_reason"] for frame in frames] == [None, None, "stop"]
    assert {frame["seq"] for frame in frames} == {"s-2"}


def test_requests_on_one_socket_are_answered_in_order(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(chunk_delay=0.1)
    ws = connect(server)
    ask(ws, "first", query="one")
    ask(ws, "second", messages=[{"role": "user", "content": "two"}])

    first, second = answer(ws), answer(ws)
    assert {frame["seq"] for frame in first} == {"first"}
    assert {frame["seq"] for frame in second} == {"second"}
    assert "".join(contents(first)) == "echo: one"
    assert "".join(contents(second)) == "echo: two"
    # consume_time counts from when the frame arrived, so the second includes its wait.
    assert float(second[-1]["data"]["consume_time"]) > float(first[-1]["data"]["consume_time"])


def test_two_sockets_stream_at_the_same_time(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x")
    upstream.default = Reply(text="a b c d e f", chunk_delay=0.25)  # about 1.5 s per answer
    sockets = [connect(server), connect(server)]
    results: dict[int, str] = {}

    def converse(index: int) -> None:
        ask(sockets[index], f"socket-{index}", query="hi")
        results[index] = "".join(contents(answer(sockets[index])))

    started = time.monotonic()
    threads = [threading.Thread(target=converse, args=(index,)) for index in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    elapsed = time.monotonic() - started
    assert results == {0: "a b c d e f", 1: "a b c d e f"}
    # One after the other would take 3 s.
    assert elapsed < 2.6, elapsed


def test_bad_frames_get_one_400_each_and_the_socket_keeps_serving(live_server, upstream, connect):
    server = live_server(API_KEY="sk-x")
    ws = connect(server)
    cases = [
        ("not json at all", "ws_invalid_frame", ""),
        ("[1, 2]", "ws_invalid_frame", ""),
        (json.dumps({"data": {"query": "hi"}}), "ws_invalid_seq", ""),
        (json.dumps({"seq": "", "data": {"query": "hi"}}), "ws_invalid_seq", ""),
        (json.dumps({"seq": 7, "data": {"query": "hi"}}), "ws_invalid_seq", ""),
        (json.dumps({"seq": "d", "data": "hi"}), "ws_invalid_data", "d"),
        (json.dumps({"seq": "e", "data": {}}), "query_or_messages", "e"),
        (json.dumps({"seq": "t", "data": {"query": "hi", "temperature": 5}}), "out_of_range", "t"),
        # eval-only syntax: chatgpt-websocket would have run it; here it is just not JSON.
        ("{'seq': 'x', 'data': {'query': __import__('os').getcwd()}}", "ws_invalid_frame", ""),
    ]
    for raw, key, seq in cases:
        ws.send(raw)
        frame = receive(ws)
        assert_error(frame, 400, key, seq)
        assert frame["msg"] == CATALOGS["en"][key].format(field="temperature", min=0, max=2)

    ask(ws, "ok", query="still there?")
    frames = answer(ws)
    assert "".join(contents(frames)) == "echo: still there?"
    assert {frame["seq"] for frame in frames} == {"ok"}
    # No bad frame reached the upstream.
    assert len(upstream.received) == 1


def test_plain_http_on_the_ws_path_gets_the_faces_envelope(live_server):
    server = live_server(API_KEY="sk-x")
    r = requests.get(server.url + "/api/ws", timeout=5)
    assert r.status_code == 426 and r.headers["Upgrade"] == "websocket"
    assert r.json() == {
        "code": 426,
        "msg": CATALOGS["en"]["ws_upgrade_required"],
        "data": {"error": "ws_upgrade_required"},
    }
    r = requests.post(server.url + "/api/ws", json={}, timeout=5)
    assert r.status_code == 405 and r.json()["data"]["error"] == "method_not_allowed"


def test_frames_over_max_body_bytes_close_the_socket(live_server, connect):
    server = live_server(API_KEY="sk-x", MAX_BODY_BYTES="2000")
    ws = connect(server)
    ask(ws, "big", query="x" * 5000)
    with pytest.raises(simple_websocket.ConnectionClosed) as closed:
        ws.receive(timeout=5)
    assert closed.value.reason == 1009  # message too big


def test_upstream_error_gets_an_error_frame_and_the_next_request_is_served(
    live_server, upstream, connect
):
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0")
    upstream.push(Reply(status=500, body={"error": {}}))
    ws = connect(server)
    ask(ws, "fails", query="hi")
    frame = receive(ws)
    assert_error(frame, 502, "upstream_error", "fails")
    assert frame["msg"] == CATALOGS["en"]["upstream_error"].format(status_code=500)

    ask(ws, "works", query="again")
    assert "".join(contents(answer(ws))) == "echo: again"


def test_messages_follow_data_lang_then_the_handshake_language(live_server, connect):
    server = live_server(API_KEY="sk-x")
    bad = {"query": "hi", "temperature": 5}
    expected = {
        lang: CATALOGS[lang]["out_of_range"].format(field="temperature", min=0, max=2)
        for lang in CATALOGS
    }

    ws = connect(server, headers={"Accept-Language": "zh-TW,zh;q=0.8"})
    ask(ws, "a", **bad, lang="ru")
    assert receive(ws)["msg"] == expected["ru"]
    ask(ws, "b", **bad)
    assert receive(ws)["msg"] == expected["zh_TW"]
    ws.send("{")
    assert receive(ws)["msg"] == CATALOGS["zh_TW"]["ws_invalid_frame"]

    ws = connect(server, query="?lang=zh_CN")
    ask(ws, "c", **bad)
    assert receive(ws)["msg"] == expected["zh_CN"]
    ask(ws, "d", **bad, lang="klingon")  # unknown: the socket's language
    assert receive(ws)["msg"] == expected["zh_CN"]

    ws = connect(server)
    ask(ws, "e", **bad)
    assert receive(ws)["msg"] == expected["en"]


def test_each_frame_counts_against_the_rate_limit(live_server, upstream, connect):
    # The handshake is one request of the same budget: it and two frames fit in 3 a second.
    server = live_server(API_KEY="sk-x", SECOND_LIMIT="3")
    ws = connect(server)
    for seq in ("r1", "r2", "r3"):
        ask(ws, seq, query=seq)

    assert "".join(contents(answer(ws))) == "echo: r1"
    assert "".join(contents(answer(ws))) == "echo: r2"
    frame = receive(ws)
    assert_error(frame, 429, "rate_limited", "r3")
    seconds = int(re.search(r"\d+", frame["msg"]).group())
    assert frame["msg"] == CATALOGS["en"]["rate_limited"].format(seconds=seconds)
    assert 1 <= seconds <= 2
    assert len(upstream.received) == 2  # the limited frame was not answered
    metrics = requests.get(server.url + "/metrics", timeout=5).text
    assert parse(metrics)[("chatservice_rate_limited_total", frozenset({("face", "ws")}))] == 1

    time.sleep(1.1)  # the window moves on
    ask(ws, "r4", query="later")
    assert "".join(contents(answer(ws))) == "echo: later"


@pytest.mark.parametrize("origin_stream", [True, False])
def test_client_disconnect_stops_the_upstream_request(
    live_server, upstream, connect, origin_stream
):
    server = live_server(API_KEY="sk-x")
    # No punctuation: in sentence mode nothing is sent before the client leaves.
    upstream.default = Reply(text=" ".join(f"w{i}" for i in range(100)), chunk_delay=0.1)
    ws = connect(server)
    ask(ws, "gone", query="q", origin_stream=origin_stream)
    if origin_stream:
        assert receive(ws)["data"]["contents"] == "w0"
    record = upstream.wait_for(1)[0]  # the upstream is answering
    ws.close()  # the client goes away mid-answer
    deadline = time.monotonic() + 5
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.05)
    # The upstream saw its connection closed long before its 10 s answer was over.
    assert record.finished is not None and record.client_gone
    assert record.finished - record.started < 5


def test_embedded_model_answers_over_the_socket(live_server, upstream, connect):
    server = live_server(BACKEND="local")
    ws = connect(server)
    ask(ws, "local", query="Say hello.", max_tokens=12)
    frames = answer(ws, timeout=60)
    assert "".join(contents(frames)).strip()
    assert frames[-1]["data"]["finish_reason"] in ("stop", "length")
    assert all(frame["code"] == 0 and frame["seq"] == "local" for frame in frames)
    assert upstream.received == []
