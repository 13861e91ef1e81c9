"""Peers of the non-streaming scenario: LiteLLM's proxy and a naive Flask + urllib3 proxy.

Both stand in front of the same upstream as the service and get the same wrk load on
``/v1/chat/completions`` (64 connections), in interleaved rounds (service, naive, LiteLLM,
then again), so a burst of other work on the machine spoils one round of each rather than
one side. Reported: each side's median requests/s over the rounds with its spread (min to
max), the service over LiteLLM (target: at least 8 times) and the service as a percentage
of the naive proxy, the ceiling of Flask + urllib3 under one gevent worker.

- LiteLLM's proxy (``litellm[proxy]``, :data:`LITELLM_VERSION`) is installed on first use
  into its own virtualenv under ``~/.cache/chatservice-bench/`` (``$BENCH_CACHE``), and runs
  with one worker, ``LITELLM_LOCAL_MODEL_COST_MAP=True`` (no download of the cost map) and a
  master key, which every request sends.
- The naive proxy is ``bench/naive_proxy.py`` under gunicorn's gevent worker with the
  service's own worker settings (one worker, WORKER_CONNECTIONS' default).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import free_port  # bench/procs.py, beside this module

log = logging.getLogger("bench.peers")

BENCH = Path(__file__).resolve().parent
LITELLM_VERSION = "1.106.2"
MASTER_KEY = "sk-bench-litellm-master"
PATH = "/v1/chat/completions"
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "ping"}]}


class PeerError(RuntimeError):
    """A peer could not be installed or started (the scenario reports it and goes on)."""


def cache_dir() -> Path:
    """Where LiteLLM's virtualenv lives (outside the repository: it is 300 MB)."""
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "chatservice-bench"))


def litellm_venv() -> Path:
    """LiteLLM's virtualenv, installed with pip on first use (a few minutes, once)."""
    venv = cache_dir() / f"litellm-{LITELLM_VERSION}"
    litellm = venv / "bin" / "litellm"
    if litellm.exists():
        return venv
    log.warning("installing litellm[proxy]==%s into %s (once)", LITELLM_VERSION, venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    steps = [
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin" / "pip"), "install", "-q", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise PeerError(f"{' '.join(step[:3])} failed: {done.stderr[-1500:]}")
    return venv


def _wait_answering(
    port: int, proc: subprocess.Popen[bytes], headers: dict[str, str], timeout: float, what: str
) -> None:
    """Until a POST of :data:`BODY` answers 200 (LiteLLM takes a while to import)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise PeerError(f"{what} exited with {proc.returncode}")
        with contextlib.suppress(OSError, http.client.HTTPException):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request(
                "POST", PATH, json.dumps(BODY), {**headers, "Content-Type": "application/json"}
            )
            status = conn.getresponse().status
            conn.close()
            if status == 200:
                return
        time.sleep(0.25)
    raise PeerError(f"{what} did not answer 200 within {timeout:g} s")


class Peer:
    """A started peer: ``url`` of its chat endpoint, ``auth`` header value or None, ``pid``."""

    def __init__(self, name: str, port: int, proc: subprocess.Popen[bytes], auth: str | None):
        self.name, self.port, self.proc, self.auth = name, port, proc, auth
        self.url = f"http://127.0.0.1:{port}{PATH}"
        self.pid = proc.pid


def start_naive(run: Any, upstream_url: str, pool: int = 100, app: str = "naive_proxy:app") -> Peer:
    """bench/naive_proxy.py (or another of bench/'s WSGI ``app``s, e.g. ``raw_relay:app``)
    under gunicorn, one gevent worker, ``pool`` upstream connections."""
    port = free_port()
    command = [
        run.python,
        "-m",
        "gunicorn",
        "-k",
        "gevent",
        "-w",
        "1",
        "--worker-connections",
        "4000",
        "-b",
        f"127.0.0.1:{port}",
        "--chdir",
        str(BENCH),
        "--log-level",
        "warning",
        app,
    ]
    env = {**os.environ, "NAIVE_UPSTREAM": upstream_url, "NAIVE_POOL": str(pool)}
    proc = run.procs.start(run.name("naive"), command, env=env, stop_signal=signal.SIGQUIT)
    _wait_answering(port, proc, {}, 30, app)
    return Peer("naive Flask + urllib3" if app == "naive_proxy:app" else app, port, proc, None)


def start_litellm(run: Any, upstream_url: str) -> Peer:
    """LiteLLM's proxy with one worker, the upstream as an ``openai/`` model."""
    venv = litellm_venv()
    port = free_port()
    config = run.workdir / f"litellm-{port}.yaml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "model_list": [
                    {
                        "model_name": BODY["model"],
                        "litellm_params": {
                            "model": "openai/" + BODY["model"],
                            "api_base": upstream_url,
                            "api_key": "sk-bench-upstream",
                        },
                    }
                ],
                "general_settings": {"master_key": MASTER_KEY},
                "litellm_settings": {"telemetry": False},
            }
        )
    )
    command = [
        str(venv / "bin" / "litellm"),
        "--config",
        str(config),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--num_workers",
        "1",
    ]
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR"}
    proc = run.procs.start(run.name("litellm"), command, env=env, stop_signal=signal.SIGTERM)
    auth = f"Bearer {MASTER_KEY}"
    _wait_answering(port, proc, {"Authorization": auth}, 180, "LiteLLM's proxy")
    return Peer(f"LiteLLM {LITELLM_VERSION}", port, proc, auth)


def compare(
    run: Any,
    service_url: str,
    upstream_url: str,
    wrk: Callable[..., dict[str, Any]],
    rounds: int,
    seconds: float,
    service_pid: int | None = None,
    started: dict[str, Peer | PeerError] | None = None,
) -> dict[str, Any]:
    """Interleaved wrk rounds (64 connections, ``seconds`` each) on the service's
    ``/v1/chat/completions`` and on each peer that starts; medians, spreads and ratios, and
    each side's CPU per request (µs, median of the rounds; the service's worker
    ``service_pid``, a peer's whole process tree).

    ``started``: peers the caller already started (``"naive"``, ``"litellm"``; or the
    :class:`PeerError` their start raised), used as they are and left running."""
    sides: dict[str, dict[str, Any]] = {
        "service": {"url": service_url, "auth": None, "pid": service_pid}
    }
    peers = []  # the ones started here, stopped here
    for key, start in (("naive", start_naive), ("litellm", start_litellm)):
        given = (started or {}).get(key)
        try:
            if isinstance(given, PeerError):
                raise given
            peer = given or start(run, upstream_url)
        except PeerError as exc:
            sides[key] = {"error": str(exc)}
            continue
        if given is None:
            peers.append(peer)
        sides[key] = {"url": peer.url, "auth": peer.auth, "name": peer.name, "pid": peer.pid}
    live = {key: side for key, side in sides.items() if "url" in side}
    try:
        for side in live.values():  # warm-up: imports, pools, caches
            wrk(run, side["url"], BODY, 64, max(1.0, seconds / 2), auth=side["auth"])
        for _ in range(rounds):
            for side in live.values():
                pids = {"side": side["pid"]} if side["pid"] else None
                result = wrk(run, side["url"], BODY, 64, seconds, pids, auth=side["auth"])
                side.setdefault("rps", []).append(result["rps"])
                side["errors"] = side.get("errors", 0) + result["error_count"]
                if pids and result["requests"]:
                    busy = result["cpu_cores"]["side"] * result["duration_us"]
                    side.setdefault("cpu_us", []).append(busy / result["requests"])
    finally:
        for peer in peers:
            run.procs.stop(peer.proc)
    for side in live.values():
        side["median_rps"] = round(statistics.median(side["rps"]), 1)
        side["spread_rps"] = [min(side["rps"]), max(side["rps"])]
        if side.get("cpu_us"):
            side["cpu_per_request_us"] = round(statistics.median(side["cpu_us"]), 1)
        side.pop("url")
    service = live["service"]["median_rps"]
    out: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "sides": sides}
    # A peer that served nothing (starved, or failing every request) gives no ratio.
    if live.get("litellm", {}).get("median_rps"):
        out["times_litellm"] = round(service / live["litellm"]["median_rps"], 2)
    elif "litellm" in live:
        sides["litellm"]["error"] = "no request answered"
    if live.get("naive", {}).get("median_rps"):
        out["pct_of_naive"] = round(100 * service / live["naive"]["median_rps"], 1)
    elif "naive" in live:
        sides["naive"]["error"] = "no request answered"
    return out
