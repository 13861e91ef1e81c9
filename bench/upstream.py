"""A fast fake OpenAI-compatible upstream for the benchmark, on 127.0.0.1, in its own process.

Raw ``gevent.server.StreamServer`` with a minimal HTTP/1.1 parser (keep-alive, Content-Length
bodies), TCP_NODELAY on every socket, so thousands of slow concurrent streams cost little:

- ``POST .../chat/completions`` (or ``/completions``) without ``"stream": true``: one fixed
  ``chat.completion`` body (answer ``pong``).
- with ``"stream": true``: Server-Sent Events in chunked encoding. The headers go at once;
  chunk ``k`` (1..``bench_chunks``) is sent at ``start + k * bench_interval`` seconds, each
  with ``delta.content`` = ``@<time.time() just before the send>@`` so that the client can
  measure the forwarding delay on the same clock; then a ``finish_reason: "stop"`` chunk and
  ``data: [DONE]``. ``bench_chunks`` and ``bench_interval`` come from the request body (the
  service forwards unknown fields), defaulting to the command-line values.
- ``GET /bench/stats``: this process's own health: event-loop lag and send lateness (how late
  a chunk left against its schedule) percentiles, streams and chunks served. ``POST
  /bench/stats`` resets the counters.

On start it prints ``READY <port>`` on stdout (port 0 lets the kernel choose a free one).
Run: ``python bench/upstream.py [--port 0] [--chunks 50] [--interval 0.2]``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after the monkey-patch
import json  # noqa: E402
import logging  # noqa: E402
import resource  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.server import StreamServer  # noqa: E402

log = logging.getLogger("bench.upstream")

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-3.5-turbo",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "pong"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}
ANSWER_BYTES = json.dumps(ANSWER).encode()
CHUNK_HEAD = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-3.5-turbo","choices":[{"index":0,"delta":{"content":"@'
)
CHUNK_TAIL = b'@"},"finish_reason":null}]}\n\n'
FINISH = (
    b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,'
    b'"model":"gpt-3.5-turbo","choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\n'
    b"data: [DONE]\n\n"
)
STREAM_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


class Stats:
    """Counters and samples of this process (milliseconds), read through ``/bench/stats``."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything measured so far."""
        self.lag_ms: list[float] = []
        self.late_ms: list[float] = []
        self.streams = 0
        self.requests = 0
        self.chunks = 0
        self.open_streams = 0
        self.peak_streams = 0

    def summary(self) -> dict[str, Any]:
        """Percentiles of the samples and the counters, as JSON-ready values."""
        return {
            "requests": self.requests,
            "streams": self.streams,
            "chunks": self.chunks,
            "open_streams": self.open_streams,
            "peak_streams": self.peak_streams,
            "loop_lag_ms": percentiles(self.lag_ms),
            "send_lateness_ms": percentiles(self.late_ms),
        }


STATS = Stats()


def percentiles(values: list[float]) -> dict[str, float | int]:
    """``{"n", "p50", "p99", "max"}`` of ``values`` (empty: only ``n``)."""
    if not values:
        return {"n": 0}
    ordered = sorted(values)
    last = len(ordered) - 1
    return {
        "n": len(ordered),
        "p50": round(ordered[last // 2], 3),
        "p99": round(ordered[min(last, int(last * 0.99))], 3),
        "max": round(ordered[last], 3),
    }


def monitor_loop(period: float = 0.01) -> None:
    """Record how late the hub wakes this greenlet: the process's own scheduling delay."""
    while True:
        before = time.monotonic()
        gevent.sleep(period)
        STATS.lag_ms.append((time.monotonic() - before - period) * 1000)
        if len(STATS.lag_ms) > 200_000:
            del STATS.lag_ms[:100_000]


class Upstream:
    """The connection handler; ``chunks``/``interval`` are the stream defaults."""

    def __init__(self, chunks: int, interval: float) -> None:
        self.chunks = chunks
        self.interval = interval

    def handle(self, sock: socket.socket, _address: Any) -> None:
        """Serve requests on one keep-alive connection until the peer closes it."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        reader = sock.makefile("rb")
        try:
            while self.serve_one(sock, reader):
                pass
        except OSError:
            pass  # the service closed the connection (a cancelled stream): nothing to answer
        finally:
            reader.close()
            sock.close()

    def serve_one(self, sock: socket.socket, reader: Any) -> bool:
        """Read one request and answer it; ``False`` when the connection is finished."""
        request_line = reader.readline(65536)
        if not request_line:
            return False
        method, _, rest = request_line.decode("latin-1").partition(" ")
        path = rest.split(" ", 1)[0]
        length = 0
        close = False
        while True:
            line = reader.readline(65536)
            if line in (b"\r\n", b"\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value.strip())
            elif name == "connection" and value.strip().lower() == "close":
                close = True
        body = reader.read(length) if length else b""
        STATS.requests += 1
        if path == "/bench/stats":
            if method == "POST":
                STATS.reset()
            send_json(sock, json.dumps(STATS.summary()).encode())
            return not close
        if method != "POST" or not path.endswith("completions"):
            send_json(sock, b'{"object":"list","data":[]}')
            return not close
        if b'"stream": true' in body or b'"stream":true' in body:
            options = json.loads(body)
            self.stream(
                sock,
                int(options.get("bench_chunks", self.chunks)),
                float(options.get("bench_interval", self.interval)),
            )
        else:
            send_json(sock, ANSWER_BYTES)
        return not close

    def stream(self, sock: socket.socket, chunks: int, interval: float) -> None:
        """One SSE stream: ``chunks`` timestamped chunks ``interval`` seconds apart."""
        STATS.streams += 1
        STATS.open_streams += 1
        STATS.peak_streams = max(STATS.peak_streams, STATS.open_streams)
        try:
            sock.sendall(STREAM_HEAD)
            start = time.monotonic()
            for k in range(1, chunks + 1):
                due = start + k * interval
                wait = due - time.monotonic()
                if wait > 0:
                    gevent.sleep(wait)
                STATS.late_ms.append((time.monotonic() - due) * 1000)
                payload = b"%s%.6f%s" % (CHUNK_HEAD, time.time(), CHUNK_TAIL)
                sock.sendall(b"%x\r\n%s\r\n" % (len(payload), payload))
                STATS.chunks += 1
            sock.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(FINISH), FINISH))
        finally:
            STATS.open_streams -= 1
        if len(STATS.late_ms) > 2_000_000:
            del STATS.late_ms[:1_000_000]


def send_json(sock: socket.socket, body: bytes) -> None:
    """A 200 ``application/json`` answer with a Content-Length (keep-alive)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    sock.sendall(head % len(body) + body)


def raise_open_files() -> None:
    """Raise the soft open-file limit to the hard one: thousands of sockets are held."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--chunks", type=int, default=50, help="default chunks per stream")
    parser.add_argument("--interval", type=float, default=0.2, help="default seconds between")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    raise_open_files()
    upstream = Upstream(args.chunks, args.interval)
    server = StreamServer(("127.0.0.1", args.port), upstream.handle, backlog=4096)
    server.init_socket()
    gevent.spawn(monitor_loop)
    sys.stdout.write(f"READY {server.address[1]}\n")
    sys.stdout.flush()
    gevent.signal_handler(signal.SIGTERM, server.stop, timeout=1)
    gevent.signal_handler(signal.SIGINT, server.stop, timeout=1)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
