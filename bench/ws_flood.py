#!/usr/bin/env python3
"""Scenario ``ws_flood``: one WebSocket client floods a worker; the worker stays responsive.

``python3 bench/ws_flood.py [--frames 400] [--frame-kb 900] [--strict]`` starts, on
127.0.0.1 only, an upstream that accepts connections and never answers (so the first frame's
answer keeps the socket's session busy) and ``python3 app.py`` with WORKERS=1. One client then
sends a small frame and ``--frames`` frames of ``--frame-kb`` KB as fast as it can, while
another thread asks ``/healthz`` every 100 ms and a third samples the worker's resident memory
every 50 ms. Targets: the socket is closed with 1008 (policy violation), ``/healthz`` always
answers within 1 s, and the worker grows by less than 60 MB (before the bound: 58 to 399 MB
in 4.4 s). Prints a Markdown table; exit 1 on a miss with ``--strict``, 2 when it cannot run.
The regression test (tests/test_hardening.py) asserts the behaviour; this measures the times.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"

try:
    import requests
    import simple_websocket
except ImportError:  # re-run with the project's virtualenv, as bench/run.py does
    if Path(sys.executable) != VENV_PYTHON and VENV_PYTHON.exists():
        os.execv(VENV_PYTHON, [str(VENV_PYTHON), *sys.argv])
    raise

try:  # imported as bench.ws_flood
    from bench.procs import Processes, free_port, rss_kib, wait_healthy
except ImportError:  # run as python3 bench/ws_flood.py: bench/ is on the path
    from procs import Processes, free_port, rss_kib, wait_healthy


def rss_mb(pid: int) -> float:
    return rss_kib(pid) / 1024


def black_hole() -> tuple[socket.socket, list[socket.socket]]:
    """A listener that accepts connections and never answers."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    return server, held


def start_service(procs: Processes, upstream_port: int) -> tuple[int, int]:
    """``app.py`` with one worker in front of ``upstream_port``; its port and worker's pid."""
    port = free_port()
    (procs.workdir / "empty.toml").write_text("")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(procs.workdir),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WORKERS": "1",
        "API_KEY": "sk-bench",
        "UPSTREAM_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "UPSTREAM_RETRIES": "0",
        "STORE_URL": "memory://",
        "CONFIG_FILE": str(procs.workdir / "empty.toml"),
    }
    # gunicorn's quick shutdown (SIGQUIT) at the end: the flooded session still waits upstream.
    command = [sys.executable, str(ROOT / "app.py")]
    proc = procs.start("service", command, env=env, stop_signal=signal.SIGQUIT)
    (worker,) = wait_healthy(port, proc, 30, lambda: procs.log_tail("service"), workers=1)
    return port, worker


def run(frames: int, frame_kb: int) -> dict[str, float | int | None]:
    """Flood one worker; the figures measured."""
    upstream, held = black_hole()
    with tempfile.TemporaryDirectory(prefix="ws-flood-") as tmp:
        procs = Processes(Path(tmp))
        try:
            port, pid = start_service(procs, upstream.getsockname()[1])
            idle = rss_mb(pid)
            stop = threading.Event()
            peak, health = [idle], [0.0]

            def sample() -> None:
                while not stop.wait(0.05):
                    peak[0] = max(peak[0], rss_mb(pid))

            def probe() -> None:
                while not stop.wait(0.1):
                    started = time.monotonic()
                    try:
                        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
                        took = time.monotonic() - started
                    except requests.RequestException:
                        took = 5.0
                    health[0] = max(health[0], took)

            for target in (sample, probe):
                threading.Thread(target=target, daemon=True).start()
            client = simple_websocket.Client.connect(f"ws://127.0.0.1:{port}/api/ws")
            client.send(json.dumps({"seq": "first", "data": {"query": "hi"}}))
            frame = json.dumps({"seq": "s", "data": {"query": "x" * (frame_kb * 1024)}})
            sent, started = 0, time.monotonic()
            with contextlib.suppress(simple_websocket.ConnectionClosed, OSError):
                for _ in range(frames):
                    client.send(frame)
                    sent += 1
            code = None
            with contextlib.suppress(simple_websocket.ConnectionClosed):
                while client.receive(timeout=10) is not None:
                    pass
            code = client.close_reason
            flood_seconds = time.monotonic() - started
            time.sleep(1.0)  # keep probing a moment after the flood
            stop.set()
            return {
                "close_code": code,
                "frames_sent": sent,
                "flood_seconds": round(flood_seconds, 2),
                "idle_mb": round(idle, 1),
                "peak_mb": round(peak[0], 1),
                "growth_mb": round(peak[0] - idle, 1),
                "healthz_max_seconds": round(health[0], 3),
            }
        finally:
            procs.stop_all()
            upstream.close()
            for sock in held:
                sock.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--frames", type=int, default=400)
    parser.add_argument("--frame-kb", type=int, default=900)
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    try:
        result = run(args.frames, args.frame_kb)
    except (RuntimeError, OSError) as exc:
        print(f"ws_flood could not run: {exc}", file=sys.stderr)
        return 2
    rows = [
        ("close code", result["close_code"], "1008", result["close_code"] == 1008),
        (
            "/healthz slowest (s)",
            result["healthz_max_seconds"],
            "< 1",
            result["healthz_max_seconds"] < 1,
        ),  # noqa: E501
        ("worker growth (MB)", result["growth_mb"], "< 60", result["growth_mb"] < 60),
    ]
    print("| ws_flood | measured | target | |\n| --- | --- | --- | --- |")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {'pass' if ok else '**miss**'} |")
    print(json.dumps(result))
    return 1 if args.strict and not all(row[3] for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
