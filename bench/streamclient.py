"""The streaming scenario's client: many concurrent SSE streams over raw gevent sockets.

Opens ``--streams`` streams to ``POST <path>`` at ``--host:--port``, their starts spread
evenly over ``--ramp`` seconds from the wall-clock time ``--start-at`` (``--phase`` shifts
them, so that two processes interleave), reads each answer with a minimal HTTP/1.1 parser
(status line, then the raw chunked body split on the SSE event terminator) and measures, for
every chunk, the forwarding delay: the receive time minus the upstream's send time embedded
in the chunk's content as ``@<time.time()>@`` (same machine, same clock). Two receive times
are kept: the kernel's arrival time of the bytes on the client's socket (``SO_TIMESTAMPNS``,
CLOCK_REALTIME; the time the client could first see the chunk, whatever this process's own
scheduling) and the time ``recvmsg`` returned here (which adds the client's own delays).

A stream counts as failed unless it answers 200, carries exactly ``--chunks`` timestamped
chunks and ends with ``data: [DONE]`` and the chunked terminator. The client's own event-loop
lag is sampled every 10 ms: it bounds how much of a measured delay is the client's.

Writes one JSON document to ``--out``: per-chunk ``[receive time, delay s, kernel delay s or
null]``, per-stream open/close times, errors, and the client's loop lag and CPU seconds.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402 - after the monkey-patch
import json  # noqa: E402
import re  # noqa: E402
import resource  # noqa: E402
import socket  # noqa: E402
import struct  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import gevent.pool  # noqa: E402

MARK = re.compile(rb"@(\d+\.\d+)@")
TERMINATOR = b"0\r\n\r\n"
#: Linux's SO_TIMESTAMPNS (also its control-message type), which Python does not name.
SO_TIMESTAMPNS = 35
TIMESPEC = struct.Struct("qq")


def receive(sock: socket.socket) -> tuple[bytes, float, float | None]:
    """Bytes from ``sock``, the time now, and the kernel's arrival time of the last of them
    (None when the kernel gave none: its timestamping starts a moment after it is asked for).
    """
    data, ancillary, _flags, _address = sock.recvmsg(65536, 64)
    now = time.time()
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= 16:
            seconds, nanoseconds = TIMESPEC.unpack_from(payload)
            return data, now, seconds + nanoseconds / 1e9
    return data, now, None


class Result:
    """Everything this process measured."""

    def __init__(self) -> None:
        # (receive time, delay seconds, kernel-arrival delay seconds or None)
        self.chunks: list[tuple[float, float, float | None]] = []
        self.streams: list[tuple[float, float | None, float | None]] = []  # start, open, close
        self.errors: list[str] = []
        self.lag_ms: list[float] = []
        self.ok = 0


def one_stream(args: argparse.Namespace, start_at: float, result: Result) -> None:
    """Run one stream that starts at ``start_at`` (wall clock) and record it in ``result``."""
    wait = start_at - time.time()
    if wait > 0:
        gevent.sleep(wait)
    started = time.time()
    opened: float | None = None
    closed: float | None = None
    error: str | None = None
    got = 0
    sock = None
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        sock.sendall(args.request)
        head = b""
        while b"\r\n\r\n" not in head:
            data, now, arrived = receive(sock)
            if not data:
                raise ConnectionError("closed before the headers")
            head += data
        opened = now
        head, _, pending = head.partition(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        if status != b"200":
            raise ConnectionError(f"HTTP {status.decode()}")
        done = False
        while True:
            # Events completed by the latest read carry that read's times.
            *events, pending = pending.split(b"\n\n")
            for event in events:
                if b"[DONE]" in event:
                    done = True
                elif b'"error"' in event:
                    raise ConnectionError("error event")
                for mark in MARK.finditer(event):
                    sent = float(mark.group(1))
                    kernel = None if arrived is None else arrived - sent
                    result.chunks.append((now, now - sent, kernel))
                    got += 1
            if done and pending.endswith(TERMINATOR):
                break
            data, now, arrived = receive(sock)
            if not data:
                raise ConnectionError("closed before the end of the stream")
            pending += data
        closed = now
        if got != args.chunks:
            error = f"{got} chunks instead of {args.chunks}"
    except (OSError, ConnectionError, IndexError) as exc:
        error = f"{type(exc).__name__}: {exc}"
        closed = time.time()
    finally:
        if sock is not None:
            sock.close()
    result.streams.append((started, opened, closed))
    if error is None:
        result.ok += 1
    else:
        result.errors.append(error)


def monitor_loop(result: Result, period: float = 0.01) -> None:
    """Sample how late the hub wakes a greenlet: this client's own scheduling delay."""
    while True:
        before = time.monotonic()
        gevent.sleep(period)
        result.lag_ms.append((time.monotonic() - before - period) * 1000)


def build_request(args: argparse.Namespace) -> bytes:
    """The HTTP/1.1 request every stream sends."""
    body = json.dumps(
        {
            "model": "gpt-3.5-turbo",
            "messages": [{"role": "user", "content": "Tell me a long story."}],
            "stream": True,
            "bench_chunks": args.chunks,
            "bench_interval": args.interval,
        }
    ).encode()
    return (
        f"POST {args.path} HTTP/1.1\r\nHost: {args.host}:{args.port}\r\n"
        f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def main(argv: list[str] | None = None) -> int:
    """Run every stream, write the JSON result, exit 0 (failures are in the result)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/api/v1/chat/completions")
    parser.add_argument("--streams", type=int, required=True)
    parser.add_argument("--chunks", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--ramp", type=float, default=2.0)
    parser.add_argument("--phase", type=float, default=0.0, help="fraction of one start gap")
    parser.add_argument("--start-at", type=float, required=True, help="wall-clock start")
    parser.add_argument("--timeout", type=float, default=60.0, help="socket timeout, seconds")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    args.request = build_request(args)

    result = Result()
    monitor = gevent.spawn(monitor_loop, result)
    gap = args.ramp / max(1, args.streams)
    pool = gevent.pool.Pool(args.streams)
    for index in range(args.streams):
        pool.spawn(one_stream, args, args.start_at + (index + args.phase) * gap, result)
    pool.join()
    monitor.kill()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    document: dict[str, Any] = {
        "streams": args.streams,
        "ok": result.ok,
        "errors": result.errors,
        "chunks": [
            [round(t, 6), round(d, 6), None if k is None else round(k, 6)]
            for t, d, k in result.chunks
        ],
        "stream_times": result.streams,
        "loop_lag_ms": sorted(round(v, 3) for v in result.lag_ms),
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    with open(args.out, "w") as fh:
        json.dump(document, fh)
    return 0


if __name__ == "__main__":
    sys.exit(main())
