"""A fake OpenAI-compatible upstream on 127.0.0.1 for the tests.

A real threaded HTTP/1.1 server: it records every request it receives and answers
``/chat/completions`` and ``/completions`` (whole or as chunked SSE, optionally slowly),
``/embeddings`` (:func:`fake_embedding` vectors, floats or base64 as asked), or
follows a scripted :class:`Reply`: any status and body, a delay, a stall, a dropped connection.
Sockets set TCP_NODELAY so keep-alive requests do not show delayed-ACK stalls.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import select
import socket
import struct
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclasses.dataclass
class Reply:
    """How to answer one request.

    ``text`` overrides the default echo answer; ``status``/``body`` send an error instead;
    ``delay`` waits before the headers; ``chunk_delay`` waits between stream chunks;
    ``stall`` holds the connection silently before anything (or until the client closes it:
    ``client_gone``); ``drop`` closes it without a
    response; ``drop_after`` closes a stream after that many chunks; ``pause_after`` waits
    ``pause`` seconds after that many chunks, or, with ``hold``, until the test sets that event
    (at most 30 s), so a test can observe what arrived while the stream is held;
    ``finish: False`` ends a stream without its finish reason and ``[DONE]``; ``truncate`` sends
    only that many bytes of a whole answer and closes; ``raw_stream`` is sent as the SSE body,
    byte for byte; ``raw_body`` is sent as a whole answer's body, byte for byte, with
    ``headers`` (e.g. ``Content-Encoding``); ``end_with_done`` sends a stream's ``[DONE]``
    and the chunked body's end in one write, ``hold_end`` holds that end until it is set;
    ``close_after`` closes the connection once the answer is written, although the answer
    let the client keep it (an upstream closing an idle keep-alive connection).
    """

    text: str | None = None
    status: int = 200
    body: Any = None
    headers: dict[str, str] = dataclasses.field(default_factory=dict)
    delay: float = 0.0
    chunk_delay: float = 0.0
    stall: float = 0.0
    drop: bool = False
    drop_after: int | None = None
    pause_after: int | None = None
    pause: float = 0.0
    hold: threading.Event | None = None
    finish: bool = True
    truncate: int | None = None
    raw_stream: bytes | None = None
    raw_body: bytes | None = None
    #: A stream's ``[DONE]`` and the chunked body's empty last chunk in one write.
    end_with_done: bool = False
    #: Hold the chunked body's empty last chunk until this is set (at most 30 s).
    hold_end: threading.Event | None = None
    #: Close the connection after the answer (its request is finished only then).
    close_after: bool = False


@dataclasses.dataclass
class Received:
    """One request as the fake upstream saw it."""

    method: str
    path: str
    headers: dict[str, str]
    json: Any
    started: float
    finished: float | None = None
    client_gone: bool = False
    #: The service's end of the connection (host, port): which keep-alive connection it used.
    peer: tuple[str, int] | None = None

    def wait_finished(self, timeout: float = 5.0) -> float:
        """Wait until the fake upstream is done with this request (it wrote its last byte or
        saw the service hang up); return when, in ``time.monotonic()`` seconds."""
        deadline = time.monotonic() + timeout
        while self.finished is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.finished is None:
            raise AssertionError(f"the fake upstream was still answering after {timeout} s")
        return self.finished


def answer_for(path: str, body: Any) -> str:
    """The default answer: ``echo: `` + the last user message (chat) or the prompt."""
    if path.endswith("/chat/completions"):
        messages = body.get("messages") or [{}]
        return "echo: " + str(messages[-1].get("content", ""))
    return "echo: " + str(body.get("prompt", ""))


def fake_embedding(text: Any) -> list[float]:
    """The fake's vector for one input: three floats derived from it (exact in float32)."""
    size = len(str(text))
    return [float(size), 0.5, -0.25]


def embeddings_body(body: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's embeddings answer for ``body``'s ``input``."""
    value = body.get("input")
    several = isinstance(value, list) and value and not isinstance(value[0], int)
    items = value if several else [value]
    data = []
    for index, item in enumerate(items):
        vector: Any = fake_embedding(item)
        if body.get("encoding_format") == "base64":
            vector = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
        data.append({"object": "embedding", "index": index, "embedding": vector})
    usage = {"prompt_tokens": 2 * len(items), "total_tokens": 2 * len(items)}
    return {"object": "list", "data": data, "model": body.get("model"), "usage": usage}


class FakeUpstream:
    """The server; ``url`` is its ``/v1`` base URL. Thread-safe for concurrent requests."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.default = Reply()
        #: Keys this upstream refuses with 401 invalid_api_key, like a revoked OpenAI key.
        self.revoked: set[str] = set()
        #: The ids its ``GET /models`` lists.
        self.models: list[str] = []
        #: The key of every GET (``/models``) received, in order.
        self.probes: list[str] = []
        #: Keys whose ``/models`` probe gets a 401 even though their chat calls are scripted.
        self.probe_refused: set[str] = set()
        #: Replies for requests whose last message (or prompt) is exactly this text, whatever
        #: the key: an upstream that refuses one particular request.
        self.by_content: dict[str, Reply] = {}
        self._queue: deque[Reply] = deque()
        self._lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = _Server(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def reset(self) -> None:
        """Forget received requests and scripted replies."""
        with self._lock:
            self.received.clear()
            self._queue.clear()
            self.default = Reply()
            self.revoked = set()
            self.models = []
            self.probes.clear()
            self.probe_refused = set()
            self.by_content = {}

    def push(self, *replies: Reply) -> None:
        """Answer the next requests with these replies, in order, then the default."""
        with self._lock:
            self._queue.extend(replies)

    def next_reply(self) -> Reply:
        with self._lock:
            return self._queue.popleft() if self._queue else self.default

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def wait_for(self, count: int, timeout: float = 5.0) -> list[Received]:
        """Wait until ``count`` requests arrived; return them."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if len(self.received) >= count:
                    return list(self.received)
            time.sleep(0.01)
        raise AssertionError(f"fake upstream got {len(self.received)} requests, not {count}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    # The default backlog of 5 makes a burst of connections wait for SYN retries (1 s+).
    request_queue_size = 512


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeUpstream

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionResetError:  # an idle keep-alive connection closed by the service
            pass

    def do_GET(self) -> None:
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        with self.fake._lock:
            self.fake.probes.append(token)
        if token in self.fake.revoked | self.fake.probe_refused:
            self._send_json(401, {"error": {"code": "invalid_api_key"}})
            return
        data = [{"id": model, "object": "model", "owned_by": "fake"} for model in self.fake.models]
        self._send_json(200, {"object": "list", "data": data})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        item = Received("POST", self.path, dict(self.headers.items()), body, time.monotonic())
        item.peer = self.client_address[:2]
        self.fake.record(item)
        token = self.headers.get("Authorization", "").removeprefix("Bearer ")
        content = answer_for(self.path, body if isinstance(body, dict) else {})
        if token in self.fake.revoked:
            reply = Reply(status=401, body={"error": {"code": "invalid_api_key"}})
        elif content.removeprefix("echo: ") in self.fake.by_content:
            reply = self.fake.by_content[content.removeprefix("echo: ")]
        else:
            reply = self.fake.next_reply()
        try:
            self._answer(reply, item, body if isinstance(body, dict) else {})
            if reply.close_after:
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:  # broken pipe, reset: the service hung up on us
            item.client_gone = True
        finally:
            item.finished = time.monotonic()

    def _answer(self, reply: Reply, item: Received, body: dict[str, Any]) -> None:
        if reply.stall and self._client_left_within(reply.stall):
            item.client_gone = True
            return
        if reply.drop:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if reply.delay:
            time.sleep(reply.delay)
        if reply.raw_body is not None:
            self.send_response(reply.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply.raw_body)))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(reply.raw_body)
            return
        if reply.status != 200 or reply.body is not None:
            self._send_json(reply.status, reply.body or {}, reply.headers)
            return
        if self.path.endswith("/embeddings"):
            self._send_json(200, embeddings_body(body), reply.headers)
            return
        text = reply.text if reply.text is not None else answer_for(self.path, body)
        chat = self.path.endswith("/chat/completions")
        model = body.get("model", "fake-model")
        if reply.raw_stream is not None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self._chunk(reply.raw_stream)
            self.wfile.write(b"0\r\n\r\n")
            return
        if body.get("stream"):
            usage = bool((body.get("stream_options") or {}).get("include_usage"))
            self._stream(reply, text, chat, model, usage)
        else:
            choice = (
                {"index": 0, "message": {"role": "assistant", "content": text}}
                if chat
                else {"index": 0, "text": text}
            )
            choice["finish_reason"] = "stop"
            usage = {
                "prompt_tokens": 5,
                "completion_tokens": len(text.split()),
                "total_tokens": 5 + len(text.split()),
            }
            self._send_json(
                200,
                {
                    "id": "fake-1",
                    "object": "chat.completion",
                    "model": model,
                    "choices": [choice],
                    "usage": usage,
                },
                reply.headers,
                reply.truncate,
            )

    def _client_left_within(self, seconds: float) -> bool:
        """Wait ``seconds`` silently; True as soon as the client closes the connection."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.connection], [], [], left)
            if readable:
                if not self.connection.recv(1, socket.MSG_PEEK):
                    return True
                time.sleep(left)  # more bytes from the client: not gone, just wait
        return False

    def _stream(self, reply: Reply, text: str, chat: bool, model: str, usage: bool) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        words = text.split(" ")
        pieces = [word if i == 0 else " " + word for i, word in enumerate(words)]
        if chat:
            self._chunk(self._event({"role": "assistant", "content": ""}, None, chat, model))
        for index, piece in enumerate(pieces):
            if reply.drop_after is not None and index >= reply.drop_after:
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            if reply.pause_after is not None and index == reply.pause_after:
                if reply.hold is not None:
                    reply.hold.wait(timeout=30)
                time.sleep(reply.pause)
            if reply.chunk_delay:
                time.sleep(reply.chunk_delay)
            self._chunk(self._event({"content": piece}, None, chat, model))
        if reply.finish:
            self._chunk(self._event({}, "stop", chat, model))
            if usage:  # stream_options.include_usage: a last chunk with no choices
                counts = {"prompt_tokens": 5, "completion_tokens": len(pieces)}
                counts["total_tokens"] = 5 + len(pieces)
                last = {"id": "fake-1", "object": "chat.completion.chunk", "model": model}
                last.update(choices=[], usage=counts)
                self._chunk(b"data: " + json.dumps(last).encode() + b"\n\n")
            done = b"data: [DONE]\n\n"
            if reply.end_with_done:
                self.wfile.write(f"{len(done):x}\r\n".encode() + done + b"\r\n0\r\n\r\n")
                self.wfile.flush()
                return
            self._chunk(done)
        if reply.hold_end is not None:
            reply.hold_end.wait(timeout=30)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    @staticmethod
    def _event(delta: dict[str, Any], finish: str | None, chat: bool, model: str) -> bytes:
        choice: dict[str, Any] = (
            {"index": 0, "delta": delta} if chat else {"index": 0, "text": delta.get("content", "")}
        )
        choice["finish_reason"] = finish
        payload = {
            "id": "fake-1",
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [choice],
        }
        return b"data: " + json.dumps(payload).encode() + b"\n\n"

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _send_json(
        self,
        status: int,
        payload: Any,
        headers: dict[str, str] | None = None,
        truncate: int | None = None,
    ) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if truncate is not None:  # the connection breaks in the middle of the body
            self.wfile.write(data[:truncate])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(data)
        self.wfile.flush()
