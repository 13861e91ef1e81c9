"""The upstream client at its limits: hang-ups retried, size caps, linear SSE, event relay,
and the key pool's one read of the shared state per call."""

from __future__ import annotations

import gzip
import json
import socket
import threading
import time
import zlib

import redis
import requests

from tests.fakeupstream import Reply

CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_a_hang_up_before_any_byte_is_retried_like_a_refused_connection(client, fake):
    fake.push(Reply(drop=True), Reply(drop=True))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 200 and r.get_json()["data"]["response"] == "echo: hi"
    assert len(fake.received) == 3  # UPSTREAM_RETRIES=2 by default


def test_hang_ups_past_the_retries_are_unreachable(make_app, fake):
    client = make_app(API_KEY="sk-x", UPSTREAM_RETRIES="1").test_client()
    fake.push(Reply(drop=True), Reply(drop=True))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 502 and r.get_json()["data"]["error"] == "upstream_unreachable"
    assert len(fake.received) == 2


def answer(text: str) -> bytes:
    return json.dumps(
        {
            "id": "x",
            "object": "chat.completion",
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


def test_a_compressed_answer_is_decoded(client, fake):
    fake.push(Reply(raw_body=gzip.compress(answer("zipped")), headers={"Content-Encoding": "gzip"}))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 200 and r.get_json()["data"]["response"] == "zipped"


def test_a_decompression_bomb_is_a_bad_response_not_a_full_inflate(live_server, upstream):
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0")
    # 1 GiB of spaces after a valid start, deflated to about 1 MB: beyond the answer cap.
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    parts = [compressor.compress(b'{"choices": [')]
    block = b" " * (1 << 20)
    parts += [compressor.compress(block) for _ in range(1024)]
    parts.append(compressor.flush())
    upstream.push(Reply(raw_body=b"".join(parts), headers={"Content-Encoding": "gzip"}))
    r = requests.post(server.url + "/api", json={"user_content": "hi"}, timeout=30)
    assert r.status_code == 502 and r.json()["data"]["error"] == "upstream_bad_response"
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}
    assert requests.post(server.url + "/api", json={"user_content": "ok"}, timeout=10).ok


def test_a_20_mb_event_line_ends_the_stream_with_an_error_event(live_server, upstream):
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0")
    first = (
        b'data: {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": null}]}\n\n'
    )
    upstream.push(Reply(raw_stream=first + b"data: " + b"x" * (20 << 20) + b"\n\n"))
    with requests.post(
        server.url + "/api/v1/chat", json={"query": "hi", "stream": True}, stream=True, timeout=30
    ) as r:
        events = [
            json.loads(line[len("data: ") :])
            for line in r.iter_lines(decode_unicode=True)
            if line.startswith("data: ")
        ]
    assert [event["data"] for event in events] == [
        {"response": "a", "finish_reason": None, "model": "gpt-3.5-turbo"},
        {"error": "upstream_bad_response"},
    ]
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}


def test_the_openai_face_relays_the_upstream_event_bytes_unchanged(client, fake):
    # Odd but valid spacing and escapes: a parse and re-encode would change these bytes.
    events = [
        b'{"id":"c1","object":"chat.completion.chunk","model":"up-model","choices":[{"index":0,'
        b'"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}',
        b'{"id":"c1",  "object":"chat.completion.chunk","model":"up-model","choices":[{"index":0,'
        b'"delta":{"content":"caf\\u00e9"},"finish_reason":null}],"usage":null}',
        b'{"id":"c1","object":"chat.completion.chunk","model":"up-model","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}],"usage":null}',
        b'{"id":"c1","object":"chat.completion.chunk","model":"up-model","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}',
    ]
    fake.push(Reply(raw_stream=b"".join(b"data: " + e + b"\r\n\r\n" for e in events)))
    r = client.post("/api/v1/chat/completions", json={**CHAT, "stream": True})
    assert r.status_code == 200
    assert r.get_data() == b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_a_relayed_stream_without_a_finish_reason_is_still_interrupted(client, fake):
    plain = b'{"choices":[{"index":0,"delta":{"content":"a"},"finish_reason":null}]}'
    fake.push(Reply(raw_stream=b"data: " + plain + b"\n\n" + b"data: " + plain + b"\n\n"))
    r = client.post("/api/v1/chat/completions", json={**CHAT, "stream": True})
    body = r.get_data(as_text=True)
    assert body.count('"content":"a"') == 2
    assert '"code": "upstream_interrupted"' in body and "[DONE]" not in body


def test_a_stream_ended_at_once_leaves_its_connection_for_the_next_call(client, fake):
    # OpenAI-compatible servers send the chunked body's end right after [DONE]: read, it lets
    # the connection serve the next call instead of being closed (a TLS handshake saved).
    fake.push(
        Reply(text="one two", end_with_done=True),
        Reply(text="three four", end_with_done=True),
        Reply(text="whole"),
    )
    for _ in range(2):
        r = client.post("/api/v1/chat/completions", json={**CHAT, "stream": True})
        assert r.get_data().endswith(b"data: [DONE]\n\n")
    assert client.post("/api/v1/chat/completions", json=CHAT).status_code == 200
    received = fake.wait_for(3)
    assert len({item.peer for item in received}) == 1


def test_a_stream_whose_body_end_lags_is_not_held_and_its_connection_is_not_reused(client, fake):
    held = threading.Event()
    fake.push(Reply(text="one two", hold_end=held), Reply(text="again", end_with_done=True))
    try:
        r = client.post("/api/v1/chat/completions", json={**CHAT, "stream": True})
        # The whole answer, [DONE] included, while the upstream still holds its body's end.
        assert r.get_data().endswith(b"data: [DONE]\n\n")
        [first] = fake.wait_for(1)
        assert first.finished is None
    finally:
        held.set()
    r = client.post("/api/v1/chat/completions", json={**CHAT, "stream": True})
    assert b"again" in r.get_data()
    first_peer, second_peer = (item.peer for item in fake.wait_for(2))
    assert first_peer != second_peer  # the first connection was closed, not reused


def test_the_key_pool_reads_its_state_in_one_round_trip(make_app, fake, redis_url):
    keys = ",".join(f"sk-pool-key-{n:04d}" for n in range(5))
    client = make_app(API_KEY=keys, SHARED_STATE_URL=redis_url).test_client()
    assert client.post("/api", json={"user_content": "warm"}).status_code == 200
    spy = redis.Redis.from_url(redis_url)
    spy.config_resetstat()
    for n in range(10):
        assert client.post("/api", json={"user_content": f"q{n}"}).status_code == 200
    stats = spy.info("commandstats")
    spy.close()
    key_reads = {
        name: row["calls"] for name, row in stats.items() if name in ("cmdstat_get", "cmdstat_mget")
    }
    assert key_reads == {"cmdstat_mget": 10}


def test_a_client_hanging_up_before_the_first_byte_closes_the_upstream_call(live_server, upstream):
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0", UPSTREAM_READ_TIMEOUT="60")
    upstream.push(Reply(stall=30.0))
    body = json.dumps({"user_content": "hi"}).encode()
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as client:
        client.sendall(
            b"POST /api HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        record = upstream.wait_for(1)[0]
    # The upstream sees its connection closed long before its 30 s stall or the 60 s timeout.
    deadline = time.monotonic() + 10
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert record.client_gone
    assert requests.get(server.url + "/healthz", timeout=5).json() == {"status": "ok"}


def test_an_answer_silent_in_the_middle_of_its_body_times_out(make_app):
    # A whole answer whose Content-Length never arrives in full: read by http.client (plain
    # body, known length), its socket timeout is still the upstream's timeout, not a break.
    server = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            conn.recv(65536)
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n"
            )
            conn.sendall(head + b'{"id":')
            done.wait(10)  # silent until the test is over

    threading.Thread(target=serve, daemon=True).start()
    try:
        app = make_app(
            UPSTREAM_BASE_URL=f"http://127.0.0.1:{server.getsockname()[1]}/v1",
            API_KEY="sk-test-configured-0001",
            UPSTREAM_READ_TIMEOUT="0.5",
            UPSTREAM_RETRIES="0",
        )
        response = app.test_client().post(
            "/api/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
        )
    finally:
        done.set()
        server.close()
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "upstream_timeout"


def _stream_events(server, body: dict) -> list:
    with requests.post(
        server.url + "/api/v1/chat/completions", json={**body, "stream": True}, timeout=20
    ) as r:
        assert r.status_code == 200
        return [
            line[len("data: ") :]
            for line in r.iter_lines(decode_unicode=True)
            if line.startswith("data: ")
        ]


def test_under_gevent_each_wait_for_the_next_chunk_gets_the_whole_idle_timeout(
    live_server, upstream
):
    # A gevent worker bounds a stream's silences with one timer re-armed for every read:
    # gaps each shorter than the idle timeout, adding up to far more, never cut the stream.
    server = live_server(API_KEY="sk-x", UPSTREAM_STREAM_IDLE_TIMEOUT="0.6")
    upstream.push(Reply(text="a b c d e f", chunk_delay=0.3))
    events = _stream_events(server, CHAT)
    assert events[-1] == "[DONE]"
    text = "".join(
        choice["delta"].get("content") or ""
        for event in events[:-1]
        for choice in json.loads(event)["choices"]
    )
    assert text == "a b c d e f"


def test_under_gevent_a_silence_past_the_idle_timeout_ends_the_stream(live_server, upstream):
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0", UPSTREAM_STREAM_IDLE_TIMEOUT="0.5")
    # Silent before the first chunk: nothing was sent yet, so an ordinary 504.
    upstream.push(Reply(text="a b", chunk_delay=3.0))
    r = requests.post(server.url + "/api", json={"user_content": "hi", "stream": True}, timeout=20)
    assert r.status_code == 504
    assert r.json()["data"]["error"] == "upstream_timeout"
    # Silent in the middle: the chunks so far, then one error event.
    upstream.push(Reply(text="a b c d", pause_after=2, pause=3.0))
    events = _stream_events(server, CHAT)
    assert json.loads(events[-1])["error"]["code"] == "upstream_timeout"
    assert "[DONE]" not in events


def test_a_connection_that_served_a_stream_bounds_its_next_answer_again(live_server, upstream):
    # The stream's socket waits without a timeout of its own under gevent; when the
    # connection serves the next call, urllib3 sets the read timeout on it again.
    server = live_server(
        API_KEY="sk-x",
        UPSTREAM_RETRIES="0",
        UPSTREAM_READ_TIMEOUT="0.8",
        UPSTREAM_STREAM_IDLE_TIMEOUT="5",
    )
    upstream.push(Reply(text="one two", end_with_done=True), Reply(stall=5.0))
    assert _stream_events(server, CHAT)[-1] == "[DONE]"
    r = requests.post(server.url + "/api/v1/chat/completions", json=CHAT, timeout=20)
    assert r.status_code == 504
    first, second = upstream.wait_for(2)
    assert first.peer == second.peer  # the same connection, reused


def _second_call_after_the_upstream_closed_the_first(post, upstream) -> tuple[int, int]:
    """Two calls (``post()`` returns the status), the upstream closing the first one's
    connection once it answered."""
    upstream.push(Reply(close_after=True))
    first = post()
    upstream.wait_for(1)[0].wait_finished()  # the upstream has closed its end by then
    second = post()
    earlier, later = upstream.wait_for(2)
    assert earlier.peer != later.peer  # a new connection, not the closed one
    return first, second


def test_an_idle_connection_the_upstream_closed_is_not_reused(make_app, fake):
    # With no retries, a call written on a connection the upstream had closed would fail
    # (502): the pool sees that the idle connection is closed and opens a new one.
    client = make_app(API_KEY="sk-x", UPSTREAM_RETRIES="0").test_client()
    first, second = _second_call_after_the_upstream_closed_the_first(
        lambda: client.post("/api/v1/chat/completions", json=CHAT).status_code, fake
    )
    assert (first, second) == (200, 200)


def test_under_gevent_an_idle_connection_the_upstream_closed_is_not_reused(live_server, upstream):
    # The same check in a gevent worker, which asks the operating system's poll rather
    # than gevent's cooperative one.
    server = live_server(API_KEY="sk-x", UPSTREAM_RETRIES="0")
    url = server.url + "/api/v1/chat/completions"
    first, second = _second_call_after_the_upstream_closed_the_first(
        lambda: requests.post(url, json=CHAT, timeout=20).status_code, upstream
    )
    assert (first, second) == (200, 200)
