#!/usr/bin/env python3
"""Benchmark harness: ``python3 bench/run.py`` (or ``make bench``) measures one gevent worker.

For each scenario it starts, on 127.0.0.1 only, a fake upstream and the service itself
(``python3 app.py`` with WORKERS=1, a free port, API_KEY set, UPSTREAM_BASE_URL at the fake
upstream, STORE_URL=memory://, no rate limits; a fresh instance per scenario so that one
scenario's garbage cannot weigh on the next), drives it from load generators running in their
own processes, prints a table (measured value, target, pass or miss) and writes the results
as JSON to ``bench/results/<timestamp>.json`` and ``bench/results/latest.json`` (``--out``).

Scenarios (``--only NAME``, repeatable; targets are for ONE worker on a 2-core machine):

``nonstream``
    ``POST /api/v1/chat/completions`` and ``POST /api`` with wrk (Debian package ``wrk``) and
    a Lua script for the POST body: throughput at 64 connections (>= 1,500 req/s) and the
    added latency at 1 connection: the service's p50/p99 minus the upstream's own, measured
    the same way in alternating rounds, medians of the rounds (p50 <= 0.6 ms, p99 <= 1.5 ms);
    also the service's CPU time per request. Then the peers (``bench/peers.py``, ``--peers``,
    on by default except with ``--quick``): LiteLLM's proxy (>= 8 times slower than the
    service) and a naive Flask + urllib3 proxy (the service >= 85 % of it) in interleaved
    rounds on ``/v1/chat/completions``. The upstream is nginx
    (``return 200 '<json>'``, private prefix and config in a temporary directory) when
    installed, else ``bench/upstream.py``.
``upstreams``
    The same throughput (OpenAI face, 64 connections) with three ``[[upstreams]]`` of equal
    priority and weight, naming the same upstream, against the one-upstream service, in
    alternating rounds (medians): >= 95 % of the one-upstream figure.
``streaming``
    2,000 concurrent streams of 10 s, one chunk every 200 ms (10,000 chunks/s), from two
    gevent client processes (``bench/streamclient.py``) through the service to the gevent
    upstream (``bench/upstream.py``): zero failed streams, all of them open at once, chunk
    forwarding delay p99 <= 20 ms (the kernel's arrival time on the client's socket minus the
    send time the upstream wrote into the chunk), and the worker's resident memory during the
    plateau minus its idle memory, per open stream, <= 64 KiB.
``idle_memory``
    The worker's resident memory after a few warm-up requests, embedded model not loaded:
    <= 60 MB.
``model``
    Tokens per second of the embedded model (smollm2-135m-instruct, fixed prompt,
    max_tokens 200, temperature 0) streamed through ``/api/v1/chat/completions``, against
    llama-cpp-python called directly (``bench/llama_direct.py``) on the same GGUF file with
    the same n_threads (LOCAL_THREADS) and n_ctx, runs interleaved, best runs compared:
    >= 95 %.

Where a target is missed, the scenario is run once more under ``py-spy record`` (pip package
``py-spy``) on the worker and the busiest functions are printed and saved (``--no-profile``
skips that; for memory, the worker's largest mappings are listed instead). The machine's
load average and the CPU other processes used during each scenario are recorded (results
taken while other work loads the machine are pessimistic); before each scenario the harness
waits up to ``--wait-quiet`` seconds for the machine to calm down, and ``--nice -10`` runs
every benchmark process ahead of other work.

Options: ``--quick`` (short runs: 200 streams for 3 s, 2 s wrk runs, 48 tokens),
``--only NAME``, ``--out DIR``, ``--streams N``, ``--stream-seconds S``, ``--threads N``,
``--profile``/``--no-profile``, ``--wait-quiet S``, ``--nice N``, ``--strict`` (exit 1 when a
target is missed), ``--keep`` (keep the temporary directory with every process's log);
``--help`` lists the rest.

Exit status: 0 when every scenario ran (misses are in the table), 1 with ``--strict`` and a
miss, 2 when a scenario could not run. Everything started is stopped on the way out
(process groups, also on SIGTERM and Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import platform
import re
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = ROOT / ".venv"
DEFAULT_OUT = BENCH / "results"
SCENARIOS = ("idle_memory", "nonstream", "upstreams", "streaming", "model")
CLK_TCK = os.sysconf("SC_CLK_TCK")

log = logging.getLogger("bench")

#: Targets: (comparison, value). ``>=``: the measured value must be at least the target.
TARGETS = {
    "throughput_rps": (">=", 1500.0),
    "added_p50_ms": ("<=", 0.6),
    "added_p99_ms": ("<=", 1.5),
    "times_litellm": (">=", 8.0),
    "pct_of_naive": (">=", 85.0),
    "errors": ("<=", 0),
    "failed_streams": ("<=", 0),
    "open_streams": (">=", 2000),
    "delay_p99_ms": ("<=", 20.0),
    "rss_per_stream_kib": ("<=", 64.0),
    "idle_rss_mb": ("<=", 60.0),
    "tokens_ratio_pct": (">=", 95.0),
    "upstreams_ratio_pct": (">=", 95.0),
}

UPSTREAM_ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "gpt-3.5-turbo",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "pong"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10},
}
#: What the service sends upstream for the OpenAI-face body below (for the upstream-alone run).
UPSTREAM_BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "ping"}]}
#: The non-streaming endpoints: name, path, body, and how to recognise the right answer.
ENDPOINTS: tuple[tuple[str, str, dict[str, Any], Callable[[Any], bool]], ...] = (
    (
        "openai",
        "/api/v1/chat/completions",
        {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "ping"}]},
        lambda body: body["choices"][0]["message"]["content"] == "pong",
    ),
    ("api", "/api", {"user_content": "ping"}, lambda body: body["current_response"] == "pong"),
)
MODEL_ID = "smollm2-135m-instruct"
MODEL_PROMPT = (
    "Write a long, detailed story about a lighthouse keeper who finds a message in a bottle. "
    "Describe the sea, the weather and the keeper's thoughts."
)
MODEL_CONTEXT = 2048


class BenchError(RuntimeError):
    """A scenario could not run (a process did not start, a check failed)."""


# --- the environment --------------------------------------------------------------------------


def ensure_venv() -> None:
    """Re-run under the project's virtualenv when this Python lacks gevent (``python3 ...``)."""
    try:
        import gevent  # noqa: F401
    except ImportError:
        python = VENV / "bin" / "python"
        if python.exists() and not os.environ.get("CHATSERVICE_BENCH_REEXEC"):
            os.environ["CHATSERVICE_BENCH_REEXEC"] = "1"
            os.execv(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]])
        sys.stderr.write("bench: gevent is missing: run `make install` first\n")
        sys.exit(2)


def raise_open_files(needed: int) -> int:
    """Raise this process's open-file limit (children inherit it); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tool(name: str) -> str | None:
    """Path of an executable on PATH or in the virtualenv, or None."""
    found = shutil.which(name)
    if found:
        return found
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else None


def version_of(command: list[str]) -> str:
    """First line a ``--version``-like command prints, or ``""``."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def environment() -> dict[str, Any]:
    """The machine and software the numbers come from."""
    import importlib.metadata

    packages = {}
    for name in (
        "gevent",
        "greenlet",
        "gunicorn",
        "flask",
        "requests",
        "llama_cpp_python",
        "py-spy",
    ):
        try:
            packages[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            packages[name] = None
    commit = version_of(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    dirty = bool(version_of(["git", "-C", str(ROOT), "status", "--porcelain"]))
    return {
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": packages,
        "wrk": version_of(["wrk", "-v"]),
        "nginx": version_of(["nginx", "-v"]),
        "git_commit": commit,
        "git_dirty": dirty,
        "loadavg_start": [round(v, 2) for v in os.getloadavg()],
    }


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


# --- /proc readings ---------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """VmRSS of ``pid`` in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise BenchError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (every thread's list)."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                found.extend(int(p) for p in (task / "children").read_text().split())
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found = [pid]
    for child in children(pid):
        found.extend(descendants(child))
    return found


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of ``pid`` so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_busy_seconds() -> float:
    """CPU seconds all processes of the machine used so far (every core, /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


class CpuMeter:
    """CPU used over a window by named process trees, by everything else, and in total.

    ``others`` is the machine's busy time minus ours: other developers' test suites, say.
    Processes that end inside the window report their CPU through :meth:`add`. For the
    ``worker``, ``<name>_runqueue_wait`` is the share of the window its main thread (the gevent
    hub) was ready to run but waiting for a CPU (``/proc/<pid>/schedstat``).
    """

    def __init__(self, pids: dict[str, int], reaped_children: bool = False) -> None:
        self.pids = dict(pids)
        self.extra: dict[str, float] = {}
        # For a window that ends after every child was waited for: their CPU, all of it.
        self.reaped = _children_cpu() if reaped_children else None
        self.started = time.monotonic()
        self.machine = machine_busy_seconds()
        self.before = {name: self._tree(name, pid) for name, pid in self.pids.items()}
        self.waited = {name: runqueue_wait(pid) for name, pid in self.pids.items()}

    @staticmethod
    def _tree(name: str, pid: int) -> float:
        # The harness's own process only: its tree holds every other process measured.
        if name == "harness":
            return cpu_seconds(pid)
        return sum(cpu_seconds(p) for p in descendants(pid))

    def add(self, name: str, seconds: float) -> None:
        """Count ``seconds`` of CPU of a process that already ended (wrk)."""
        self.extra[name] = self.extra.get(name, 0.0) + seconds

    def stop(self) -> dict[str, float]:
        """Cores used on average over the window: ``{"worker": 0.98, ..., "others": 0.1}``."""
        wall = max(1e-6, time.monotonic() - self.started)
        used = {name: self._tree(name, pid) - self.before[name] for name, pid in self.pids.items()}
        used.update(self.extra)
        if self.reaped is not None:
            used["children"] = _children_cpu() - self.reaped
        total = machine_busy_seconds() - self.machine
        cores = {name: round(seconds / wall, 3) for name, seconds in used.items()}
        cores["others"] = round(max(0.0, total - sum(used.values())) / wall, 3)
        cores["machine"] = round(total / wall, 3)
        for name, pid in self.pids.items():
            if name != "harness":
                cores[f"{name}_runqueue_wait"] = round(
                    (runqueue_wait(pid) - self.waited[name]) / wall, 3
                )
        return cores


def runqueue_wait(pid: int) -> float:
    """Seconds ``pid``'s main thread has spent runnable but waiting for a CPU (0 if gone)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- processes --------------------------------------------------------------------------------


class Processes:
    """Every process the harness starts, each in its own process group, all stopped at exit."""

    def __init__(self, workdir: Path, nice: int = 0) -> None:
        self.workdir = workdir
        self.nice = nice
        self.running: list[tuple[str, subprocess.Popen[bytes], int]] = []

    def start(
        self,
        name: str,
        command: list[str],
        env: dict[str, str] | None = None,
        stdout_pipe: bool = False,
        stdin_pipe: bool = False,
        stop_signal: int = signal.SIGTERM,
    ) -> subprocess.Popen[bytes]:
        """Start ``command``; stderr (and stdout unless piped) go to ``<workdir>/<name>.log``."""
        logfile = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - closed below
        try:
            proc = subprocess.Popen(
                command,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if stdout_pipe else logfile,
                stderr=logfile,
                start_new_session=True,  # its own process group: stop() reaches its children
            )
        finally:
            logfile.close()
        self.running.append((name, proc, stop_signal))
        if self.nice:
            set_autogroup_nice(proc.pid, self.nice)
        return proc

    def log_tail(self, name: str, lines: int = 30) -> str:
        """The end of a process's log, for error messages."""
        path = self.workdir / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
        """Stop ``proc``'s whole process group: its stop signal, then SIGKILL."""
        stop_signal = signal.SIGTERM
        for index, (_name, running, its_signal) in enumerate(self.running):
            if running is proc:
                del self.running[index]
                stop_signal = its_signal
                break
        # Until the leader is reaped its pid, even as a zombie, names its group and cannot be
        # reused: the signals below can only reach processes this harness started.
        if proc.returncode is None:
            if not has_exited(proc):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, stop_signal)
                wait_exit(proc, timeout)
            # Whatever is left of the group (a gunicorn worker, nginx workers) goes too.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()

    def stop_all(self) -> None:
        """Stop everything still running, newest first."""
        while self.running:
            self.stop(self.running[-1][1])


def has_exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` ended, without reaping it (see :meth:`Processes.stop`)."""
    if proc.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for ``proc`` to end, without reaping it."""
    deadline = time.monotonic() + timeout
    while not has_exited(proc):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def set_autogroup_nice(pid: int, nice: int) -> None:
    """Give ``pid``'s scheduling group (a new session is one, with kernel autogroups) the nice
    value ``nice``: with autogroups, a process's own nice only counts inside its group."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/autogroup").write_text(str(nice))


def read_line(proc: subprocess.Popen[bytes], timeout: float, what: str) -> str:
    """The next line ``proc`` writes on stdout, waiting at most ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise BenchError(f"{what}: no answer within {timeout:.0f} s")
    line = proc.stdout.readline().decode(errors="replace")
    if not line:
        raise BenchError(f"{what}: exited")
    return line.strip()


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float, what: str) -> None:
    """Wait until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if has_exited(proc):
            raise BenchError(f"{what} exited")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s")


def http_json(
    port: int, method: str, path: str, body: Any = None, timeout: float = 30.0
) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:``port``; the status and the decoded JSON body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data.decode(errors="replace")
    finally:
        conn.close()


# --- the service and the upstreams ------------------------------------------------------------


class Run:
    """One harness run: options, the temporary directory, the processes started."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.workdir = workdir
        self.procs = Processes(workdir, args.nice)
        self.python = sys.executable
        self.empty_config = workdir / "empty.toml"
        self.empty_config.write_text("")
        self.counter = 0

    def name(self, base: str) -> str:
        """A unique log name for a process."""
        self.counter += 1
        return f"{self.counter:02d}-{base}"


class Service:
    """``python3 app.py`` (gunicorn master) and its one gevent worker."""

    def __init__(
        self,
        run: Run,
        upstream_url: str,
        extra: dict[str, str] | None = None,
        ready_timeout: float = 60.0,
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_name = run.name("service")
        # A minimal environment: nothing of the developer's own settings, .env or config.toml
        # (the working directory is the temporary one) changes what is measured.
        env = {key: os.environ[key] for key in ("PATH", "HOME", "TMPDIR") if key in os.environ}
        env.update(
            {
                "HOST": "127.0.0.1",
                "PORT": str(self.port),
                "WORKERS": "1",
                "API_KEY": "sk-bench-0000000000000000000000000000",
                "UPSTREAM_BASE_URL": upstream_url,
                "STORE_URL": "memory://",
                "RATELIMIT_STORAGE_URI": "memory://",
                "HOUR_LIMIT": "0",
                "MINUTE_LIMIT": "0",
                "SECOND_LIMIT": "0",
                "UPSTREAM_RPM": "0",
                "CONFIG_FILE": str(run.empty_config),
                **(extra or {}),
            }
        )
        self.env = env
        self.run = run
        self.proc = run.procs.start(
            self.log_name, [run.python, str(ROOT / "app.py")], env=env, stop_signal=signal.SIGQUIT
        )
        self.worker = self._wait_ready(ready_timeout)

    def _wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if has_exited(self.proc):
                raise BenchError("the service exited:\n" + self.run.procs.log_tail(self.log_name))
            with contextlib.suppress(OSError, http.client.HTTPException):
                status, _ = http_json(self.port, "GET", "/healthz", timeout=2)
                workers = children(self.proc.pid)
                if status == 200 and len(workers) == 1:
                    return workers[0]
            time.sleep(0.1)
        raise BenchError("the service did not start:\n" + self.run.procs.log_tail(self.log_name))

    def rss_kib(self) -> int:
        """The worker's resident memory (KiB)."""
        return rss_kib(self.worker)

    def stop(self) -> None:
        """gunicorn's quick shutdown (SIGQUIT) of the master and worker."""
        self.run.procs.stop(self.proc)


class GeventUpstream:
    """``bench/upstream.py`` in its own process."""

    def __init__(self, run: Run, chunks: int = 50, interval: float = 0.2) -> None:
        command = [
            run.python,
            str(BENCH / "upstream.py"),
            "--chunks",
            str(chunks),
            "--interval",
            str(interval),
        ]
        self.run = run
        self.proc = run.procs.start(run.name("upstream"), command, stdout_pipe=True)
        line = read_line(self.proc, 30, "bench/upstream.py")
        if not line.startswith("READY "):
            raise BenchError(f"bench/upstream.py said {line!r}")
        self.port = int(line.split()[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.kind = "gevent (bench/upstream.py)"

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """The upstream's own counters and lag (``reset``: start counting afresh)."""
        _status, body = http_json(self.port, "POST" if reset else "GET", "/bench/stats")
        return body

    def stop(self) -> None:
        """Stop the process."""
        self.run.procs.stop(self.proc)


class NginxUpstream:
    """nginx answering every request with the fixed completion, private prefix and config."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.port = free_port()
        prefix = run.workdir / f"nginx-{self.port}"
        prefix.mkdir()
        body = json.dumps(UPSTREAM_ANSWER)
        temp = "\n".join(
            f"    {name}_temp_path {prefix}/{name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (prefix / "nginx.conf").write_text(
            f"""daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
{temp}
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{self.port};
        location / {{
            default_type application/json;
            return 200 '{body}';
        }}
    }}
}}
"""
        )
        command = ["nginx", "-e", f"{prefix}/error.log", "-p", str(prefix)]
        command += ["-c", str(prefix / "nginx.conf")]
        self.proc = run.procs.start(run.name("nginx"), command, stop_signal=signal.SIGTERM)
        wait_port(self.port, self.proc, 15, "nginx")
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.kind = "nginx (return 200)"

    def stop(self) -> None:
        """Stop the master and its workers."""
        self.run.procs.stop(self.proc)


# --- wrk --------------------------------------------------------------------------------------


def wrk(
    run: Run,
    url: str,
    body: dict[str, Any],
    connections: int,
    seconds: float,
    meter_pids: dict[str, int] | None = None,
    auth: str | None = None,
) -> dict[str, Any]:
    """One wrk run (one thread, ``connections`` keep-alive connections) POSTing ``body``
    (with ``auth`` as the Authorization header).

    Returns wrk's counts, ``rps`` and latency percentiles (µs), and with ``meter_pids`` the
    cores each process tree used (``cpu``), wrk's own included.
    """
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "5s"]
    command += ["--latency", "-s", str(BENCH / "post.lua"), url]
    env = {**os.environ, "BENCH_BODY": json.dumps(body)}
    if auth:
        env["BENCH_AUTH"] = auth
    meter = CpuMeter({**(meter_pids or {}), "harness": os.getpid()})
    proc = run.procs.start(run.name("wrk"), command, env=env, stdout_pipe=True)
    assert proc.stdout is not None
    output = proc.stdout.read().decode(errors="replace")
    wait_exit(proc, seconds + 30)
    meter.add("wrk", cpu_seconds(proc.pid))  # a zombie still shows its CPU times
    cpu = meter.stop()
    run.procs.stop(proc)
    match = re.search(r"^BENCH_JSON (\{.*\})$", output, re.MULTILINE)
    if proc.returncode != 0 or match is None:
        raise BenchError(f"wrk failed ({proc.returncode}): {output[-2000:]}")
    result = json.loads(match.group(1))
    result["rps"] = round(result["requests"] / (result["duration_us"] / 1e6), 1)
    result["error_count"] = sum(result["errors"].values())
    result["cpu_cores"] = cpu
    return result


def median_of_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Several wrk runs as one: summed counts, the median of each latency percentile."""
    merged = {
        "rounds": len(runs),
        "requests": sum(r["requests"] for r in runs),
        "duration_us": sum(r["duration_us"] for r in runs),
        "error_count": sum(r["error_count"] for r in runs),
        "latency_us": {
            key: statistics.median(r["latency_us"][key] for r in runs)
            for key in ("p50", "p90", "p99", "p999", "max")
        },
        "rounds_p50_p99_us": [[r["latency_us"]["p50"], r["latency_us"]["p99"]] for r in runs],
        "cpu_cores": runs[-1]["cpu_cores"],
    }
    merged["rps"] = round(merged["requests"] / (merged["duration_us"] / 1e6), 1)
    return merged


# --- results ----------------------------------------------------------------------------------


class Scenario:
    """The measured rows and details of one scenario."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {"loadavg_start": [round(v, 2) for v in os.getloadavg()]}
        self.error: str | None = None

    def metric(
        self, label: str, key: str | None, value: float, unit: str, target: float | None = None
    ) -> dict[str, Any]:
        """Record a measured value; ``key`` names its target in :data:`TARGETS` (or None),
        ``target`` replaces that entry's number (a target that depends on the options)."""
        row: dict[str, Any] = {"metric": label, "value": value, "unit": unit}
        if key is not None:
            op, default = TARGETS[key]
            target = default if target is None else target
            row["target"] = f"{op} {target:g}"
            row["target_value"] = target
            row["pass"] = value >= target if op == ">=" else value <= target
        self.rows.append(row)
        return row

    @property
    def missed(self) -> list[dict[str, Any]]:
        """Rows whose target was missed."""
        return [row for row in self.rows if row.get("pass") is False]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"metrics": self.rows, "details": self.details, "error": self.error}


def percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of the sorted list ``ordered``."""
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[index]


def miss_note(row: dict[str, Any]) -> str:
    """How far a missed row is from its target, e.g. ``"1.9x the target"``."""
    value, target = row["value"], row["target_value"]
    if not target:
        return f"{value:g} instead of {target:g}"
    ratio = value / target
    if row["target"].startswith(">="):
        return f"{_pct(1 - ratio)} % short of the target ({value:.5g} < {target:g})"
    return f"{_pct(ratio - 1)} % over the target ({value:.5g} > {target:g})"


def _pct(fraction: float) -> str:
    pct = 100 * fraction
    return f"{pct:.0f}" if pct >= 10 else f"{pct:.1f}" if pct >= 1 else f"{pct:.2f}"


# --- profiling --------------------------------------------------------------------------------


@contextlib.contextmanager
def py_spy(run: Run, pid: int, seconds: float, label: str) -> Iterator[dict[str, Any]]:
    """Sample ``pid`` with ``py-spy record`` for about ``seconds`` while the body runs.

    The summary (busiest functions by own and by inclusive samples) lands in the yielded
    dict when the block ends; nothing is done when py-spy is not installed.
    """
    summary: dict[str, Any] = {}
    exe = tool("py-spy")
    if exe is None:
        summary["error"] = "py-spy is not installed (pip install py-spy==0.4.3)"
        yield summary
        return
    raw = run.args.out / f"{run.args.stamp}-{label}.pyspy.txt"
    rate = 200
    command = [exe, "record", "--pid", str(pid), "--duration", str(max(1, round(seconds)))]
    command += ["--rate", str(rate), "--nonblocking", "--format", "raw", "--output", str(raw)]
    name = run.name("py-spy")
    proc = run.procs.start(name, command)
    time.sleep(0.5)
    try:
        yield summary
    finally:
        wait_exit(proc, seconds + 30)
        run.procs.stop(proc)
        if raw.exists():
            summary.update(summarize_profile(raw.read_text(), rate, seconds))
            summary["raw"] = str(raw)
        else:
            summary["error"] = "py-spy wrote nothing: " + run.procs.log_tail(name, 5)


_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _frame_name(frame: str) -> str:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip()
    path = match.group("file")
    for marker in ("site-packages/", str(ROOT) + "/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    return f"{match.group('func')} ({path})"


def summarize_profile(text: str, rate: int, seconds: float) -> dict[str, Any]:
    """Top functions of a py-spy ``raw`` (collapsed stacks) profile, in % of busy samples."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        samples = int(count)
        total += samples
        frames = [_frame_name(f) for f in stack.split(";") if not f.startswith("process ")]
        frames = [f for f in frames if not f.startswith("<module>")] or frames
        if frames:
            own[frames[-1]] += samples
        for name in set(frames):
            inclusive[name] += samples
    if not total:
        return {"samples": 0}

    def top(counter: Counter[str], count: int, below: float = 1.0) -> list[list[Any]]:
        rows = [[name, round(100 * n / total, 1)] for name, n in counter.most_common()]
        return [row for row in rows if row[1] < 100 * below][:count]

    return {
        "samples": total,
        "busy_fraction": round(total / (rate * seconds), 2),
        "top_own_pct": top(own, 12),
        # The outer frames every request passes through (server, WSGI app) say nothing.
        "top_inclusive_pct": top(inclusive, 20, below=0.75),
    }


def memory_breakdown(pid: int) -> dict[str, Any]:
    """Where a process's resident memory is: anonymous vs file-backed, largest mappings."""
    by_path: Counter[str] = Counter()
    current = "[anon]"
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
            parts = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                path = parts[5] if len(parts) > 5 else "[anon]"
                if "site-packages/" in path:
                    path = path.split("site-packages/", 1)[1].split("/", 1)[0] + " (.so)"
                current = path
            elif parts and parts[0] == "Rss:":
                by_path[current] += int(parts[1])
    rollup: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = line.partition(":")
            if key in ("Rss", "Anonymous", "Shared_Clean", "Private_Clean", "Private_Dirty"):
                rollup[key.lower() + "_kib"] = int(value.split()[0])
    return {
        "rollup": rollup,
        "largest_kib": [[path, kib] for path, kib in by_path.most_common(10)],
    }


def python_allocations(run: Run, env: dict[str, str]) -> dict[str, Any]:
    """``bench/memprofile.py``'s view: Python memory of a freshly built app, by package."""
    proc = run.procs.start(
        run.name("memprofile"), [run.python, str(BENCH / "memprofile.py")], env, stdout_pipe=True
    )
    try:
        return json.loads(read_line(proc, 60, "bench/memprofile.py"))
    except (BenchError, ValueError) as exc:
        return {"error": str(exc)}
    finally:
        run.procs.stop(proc)


# --- scenarios --------------------------------------------------------------------------------


def scenario_idle_memory(run: Run, result: Scenario) -> None:
    """Idle worker RSS after warm-up requests, the embedded model not loaded."""
    upstream = GeventUpstream(run)
    service = Service(run, upstream.url)
    result.details["service_pid"] = service.proc.pid
    result.details["worker_pid"] = service.worker
    fresh = service.rss_kib()
    for _ in range(10):
        for _name, path, body, check in ENDPOINTS:
            status, answer = http_json(service.port, "POST", path, body)
            if status != 200 or not check(answer):
                raise BenchError(f"{path} answered {status}: {answer!r:.300}")
    stream_request = {**ENDPOINTS[0][2], "stream": True, "bench_chunks": 3, "bench_interval": 0.01}
    status, _ = http_json(service.port, "POST", ENDPOINTS[0][1], stream_request)
    if status != 200:
        raise BenchError(f"streaming request answered {status}")
    time.sleep(1.0)
    warm = service.rss_kib()
    maps = Path(f"/proc/{service.worker}/maps").read_text()
    result.details.update(
        {
            "rss_fresh_kib": fresh,
            "rss_warm_kib": warm,
            "model_loaded": "libllama" in maps,
            "threads": len(os.listdir(f"/proc/{service.worker}/task")),
        }
    )
    if "libllama" in maps:
        raise BenchError("the embedded model's library is loaded in an idle worker")
    row = result.metric("worker RSS, idle after warm-up", "idle_rss_mb", warm * 1024 / 1e6, "MB")
    result.metric("worker RSS right after start", None, fresh * 1024 / 1e6, "MB")
    if row["pass"] is False or run.args.profile:
        result.details["memory_breakdown"] = memory_breakdown(service.worker)
        result.details["python_allocations"] = python_allocations(run, service.env)
    service.stop()
    upstream.stop()


def scenario_nonstream(run: Run, result: Scenario) -> None:
    """Throughput at 64 connections and added latency at 1, both faces."""
    seconds = run.args.wrk_seconds
    warm = max(1.0, seconds / 5)
    if shutil.which("nginx") and run.args.upstream != "gevent":
        upstream: NginxUpstream | GeventUpstream = NginxUpstream(run)
    else:
        upstream = GeventUpstream(run)
    result.details["upstream"] = upstream.kind
    service = Service(run, upstream.url)
    result.details["worker_pid"] = service.worker
    # The worker (not the master's tree): its main thread is the hub whose run-queue wait counts.
    pids = {"worker": service.worker, "upstream": upstream.proc.pid}
    upstream_url = upstream.url + "/chat/completions"
    for name, path, body, check in ENDPOINTS:
        status, answer = http_json(service.port, "POST", path, body)
        if status != 200 or not check(answer):
            raise BenchError(f"{path} answered {status}: {answer!r:.300}")
        url = service.url + path
        wrk(run, url, body, 64, warm)
        busy = wrk(run, url, body, 64, seconds, pids)
        wrk(run, upstream_url, UPSTREAM_BODY, 1, warm)
        # Upstream alone and through the service in alternating short rounds, medians of the
        # rounds' percentiles: a burst of other work then spoils one round, not the result.
        rounds = run.args.latency_rounds
        alone_runs, single_runs = [], []
        for _ in range(rounds):
            alone_runs.append(wrk(run, upstream_url, UPSTREAM_BODY, 1, seconds / rounds, pids))
            single_runs.append(wrk(run, url, body, 1, seconds / rounds, pids))
        alone, single = median_of_rounds(alone_runs), median_of_rounds(single_runs)
        added_p50 = (single["latency_us"]["p50"] - alone["latency_us"]["p50"]) / 1000
        added_p99 = (single["latency_us"]["p99"] - alone["latency_us"]["p99"]) / 1000
        result.metric(f"{path}: throughput, 64 connections", "throughput_rps", busy["rps"], "req/s")
        result.metric(f"{path}: added latency p50, 1 connection", "added_p50_ms", added_p50, "ms")
        result.metric(f"{path}: added latency p99, 1 connection", "added_p99_ms", added_p99, "ms")
        # CPU per request depends much less than req/s on what else runs on the machine.
        cpu_us = busy["cpu_cores"]["worker"] * busy["duration_us"] / max(1, busy["requests"])
        result.metric(f"{path}: worker CPU per request, 64 connections", None, cpu_us, "µs")
        errors = busy["error_count"] + single["error_count"] + alone["error_count"]
        result.metric(f"{path}: wrk errors (socket, non-2xx)", "errors", errors, "")
        result.details[name] = {
            "path": path,
            "throughput_64": busy,
            "service_1": single,
            "upstream_alone_1": alone,
        }
    if run.args.peers:
        import peers  # bench/peers.py, beside this script

        rounds, round_seconds = run.args.peer_rounds, max(2.0, seconds / 2)
        compared = peers.compare(
            run, service.url + ENDPOINTS[0][1], upstream.url, wrk, rounds, round_seconds
        )
        result.details["peers"] = compared
        spread = compared["sides"]["service"]["spread_rps"]
        result.metric(
            f"peers: service req/s, median of {rounds} (spread {spread[0]:g}-{spread[1]:g})",
            None,
            compared["sides"]["service"]["median_rps"],
            "req/s",
        )
        for key, label in (
            ("times_litellm", "times LiteLLM's req/s"),
            ("pct_of_naive", "% of the naive Flask + urllib3 proxy's req/s"),
        ):
            if key in compared:
                result.metric(f"peers: service {label}", key, compared[key], "")
            else:
                name = key.split("_", 2)[-1]
                result.details.setdefault("peer_errors", {})[name] = compared["sides"][name]
    if result.missed and run.args.profile:
        for name, path, body, _check in ENDPOINTS:
            rows = [r for r in result.missed if r["metric"].startswith(path + ":")]
            if not rows:
                continue
            with py_spy(run, service.worker, seconds, f"nonstream-{name}") as profile:
                profile["run"] = wrk(run, service.url + path, body, 64, seconds, pids)
            result.details[name]["profile"] = profile
    service.stop()
    upstream.stop()


def scenario_upstreams(run: Run, result: Scenario) -> None:
    """Non-streaming throughput (OpenAI face, 64 connections) with three ``[[upstreams]]``
    (equal priority and weight, so every call goes through the weighted choice and the
    breakers) against one upstream (no list), in alternating rounds: medians of the rounds.
    The three entries name the same upstream process, so the upstream's own speed is the
    same in both and only the service's routing differs.
    """
    if shutil.which("nginx") and run.args.upstream != "gevent":
        upstream: NginxUpstream | GeventUpstream = NginxUpstream(run)
    else:
        upstream = GeventUpstream(run)
    result.details["upstream"] = upstream.kind
    entries = [
        {"name": name, "base_url": upstream.url, "api_key": "sk-bench-" + name * 8, "models": ["*"]}
        for name in ("one", "two", "three")
    ]
    services = {
        "one upstream": Service(run, upstream.url),
        "three upstreams": Service(run, upstream.url, extra={"UPSTREAMS": json.dumps(entries)}),
    }
    _name, path, body, check = ENDPOINTS[0]
    rounds = run.args.latency_rounds
    seconds = run.args.wrk_seconds
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in services}
    for service in services.values():
        status, answer = http_json(service.port, "POST", path, body)
        if status != 200 or not check(answer):
            raise BenchError(f"{path} answered {status}: {answer!r:.300}")
        wrk(run, service.url + path, body, 64, max(1.0, seconds / 5))
    for index in range(rounds):
        # Alternate which goes first, so a trend in the machine's other load favours neither.
        order = list(services.items())
        for label, service in order if index % 2 == 0 else order[::-1]:
            pids = {"worker": service.worker, "upstream": upstream.proc.pid}
            runs[label].append(wrk(run, service.url + path, body, 64, seconds, pids))
    rps = {}
    for label, measured in runs.items():
        rps[label] = sorted(r["rps"] for r in measured)[len(measured) // 2]
        errors = sum(r["error_count"] for r in measured)
        result.metric(f"{path}: throughput, {label}, 64 connections", None, rps[label], "req/s")
        result.metric(f"{path}: wrk errors, {label}", "errors", errors, "")
    ratio = 100.0 * rps["three upstreams"] / max(1.0, rps["one upstream"])
    result.metric("three upstreams vs one: throughput", "upstreams_ratio_pct", ratio, "%")
    result.details["rounds"] = runs
    for service in services.values():
        service.stop()
    upstream.stop()


def scenario_streaming(run: Run, result: Scenario, profile: bool = False) -> None:
    """2,000 concurrent 10 s streams: errors, forwarding delay, memory per open stream."""
    args = run.args
    streams, interval = args.streams, args.interval
    chunks = max(1, round(args.stream_seconds / interval))
    ramp = min(args.ramp, args.stream_seconds / 3)
    upstream = GeventUpstream(run, chunks, interval)
    service = Service(run, upstream.url, {"UPSTREAM_POOL_SIZE": str(streams)})
    result.details.update(
        {
            "worker_pid": service.worker,
            "streams": streams,
            "chunks_per_stream": chunks,
            "interval_s": interval,
            "ramp_s": ramp,
            "client_processes": args.clients,
        }
    )
    # Warm-up through the same client: proves the path works, loads what the first stream
    # loads, before the idle reading.
    warm = run_clients(run, service.port, 20, 3, 0.01, 0.2, 1)
    if warm["failed"]:
        raise BenchError(f"warm-up streams failed: {warm['error_kinds']}")
    time.sleep(1.0)
    idle = service.rss_kib()
    upstream.stats(reset=True)
    pids = {"worker": service.worker, "upstream": upstream.proc.pid}
    start_at = time.time() + 2.0
    plateau = (start_at + ramp + 0.5, start_at + chunks * interval - 0.2)
    samples: list[dict[str, Any]] = []
    cpu: dict[str, Any] = {}
    context = (
        py_spy(run, service.worker, plateau[1] - time.time(), "streaming")
        if profile
        else contextlib.nullcontext({})
    )
    with context as spy:
        outcome = run_clients(
            run,
            service.port,
            streams,
            chunks,
            interval,
            ramp,
            args.clients,
            start_at=start_at,
            during=lambda clients: sample_plateau(
                service, upstream, plateau, samples, cpu, {**pids, **clients}
            ),
        )
    up = upstream.stats()
    plateau_samples = [s for s in samples if plateau[0] <= s["t"] <= plateau[1]]
    if not plateau_samples:
        raise BenchError("no memory sample fell inside the plateau")
    peak = max(s["rss_kib"] for s in plateau_samples)
    open_streams = statistics.median(s["open_streams"] for s in plateau_samples)
    received = outcome["chunks"]  # (receive time, user-space delay, kernel-arrival delay)
    user_delays = sorted(c[1] for c in received)
    # The kernel's arrival time on the client's socket, when (nearly) every chunk has one:
    # the client's own scheduling then cannot inflate what is measured.
    kernel = sum(1 for c in received if c[2] is not None) >= 0.99 * len(received) > 0

    def delay_of(chunk: list[Any]) -> float:
        return chunk[2] if kernel and chunk[2] is not None else chunk[1]

    delays = sorted(delay_of(c) for c in received)
    seen = "arrival at the client's socket" if kernel else "client's receive"
    steady = sorted(delay_of(c) for c in received if plateau[0] <= c[0] <= plateau[1])
    in_plateau = len(steady)
    per_stream = (peak - idle) / max(1.0, open_streams)
    result.metric(f"failed streams (of {streams})", "failed_streams", outcome["failed"], "")
    result.metric("streams open at once (plateau)", "open_streams", open_streams, "", streams)
    result.metric(f"chunk forwarding delay p50 ({seen})", None, percentile(delays, 50) * 1e3, "ms")
    result.metric(
        f"chunk forwarding delay p99 ({seen})",
        "delay_p99_ms",
        percentile(delays, 99) * 1000,
        "ms",
    )
    if kernel:
        result.metric(
            "chunk delay p99 as the client process read it",
            None,
            percentile(user_delays, 99) * 1e3,
            "ms",
        )
    # Only the chunks of the plateau: steady relaying, without the opening of streams.
    result.metric(
        "chunk forwarding delay p99, plateau only", None, percentile(steady, 99) * 1e3, "ms"
    )
    result.metric("worker RSS per open stream", "rss_per_stream_kib", per_stream, "KiB")
    worker_cores = cpu.get("worker")
    if worker_cores is not None and in_plateau:
        per_chunk = worker_cores * (plateau[1] - plateau[0]) / in_plateau * 1e6
        result.metric("worker CPU per relayed chunk", None, per_chunk, "µs")
    result.metric(
        f"chunks relayed per second in the plateau (open streams x {1 / interval:g})",
        None,
        in_plateau / max(1e-6, plateau[1] - plateau[0]),
        "/s",
    )
    if open_streams < streams:
        result.details["note_open_streams"] = (
            f"only {open_streams:g} of {streams} streams were open at once: the others waited "
            "to be accepted (gunicorn's worker_connections, 1000 by default, caps one worker)"
        )
    result.details.update(
        {
            "idle_rss_kib": idle,
            "plateau_peak_rss_kib": peak,
            "plateau_s": round(plateau[1] - plateau[0], 2),
            "delay_kind": "kernel arrival" if kernel else "user-space receive",
            "delay_ms": delay_summary(delays),
            "user_space_delay_ms": delay_summary(user_delays),
            "plateau_delay_ms": delay_summary(steady),
            "delay_by_second": delay_timeline(received, start_at, delay_of),
            "first_chunk_s": outcome["first_chunk_s"],
            "error_kinds": outcome["error_kinds"],
            "clients": outcome["clients"],
            "upstream": up,
            "cpu_cores_plateau": {k: v for k, v in cpu.items() if k != "meter"},
            "samples": samples,
        }
    )
    if spy:
        result.details["profile"] = spy
    service.stop()
    upstream.stop()


def delay_summary(delays: list[float]) -> dict[str, Any]:
    """Percentiles (ms) of sorted delays in seconds."""
    summary: dict[str, Any] = {
        q: round(percentile(delays, float(q[1:])) * 1000, 2) for q in ("p50", "p90", "p99", "p999")
    }
    summary["max"] = round(delays[-1] * 1000, 2) if delays else None
    summary["n"] = len(delays)
    return summary


def delay_timeline(
    chunks: list[list[Any]], start: float, delay_of: Callable[[list[Any]], float]
) -> list[list[float]]:
    """Per second of the run: ``[second, chunks, p50 ms, p99 ms]`` of the chunks received."""
    buckets: dict[int, list[float]] = {}
    for chunk in chunks:
        buckets.setdefault(int(chunk[0] - start), []).append(delay_of(chunk))
    timeline = []
    for second in sorted(buckets):
        values = sorted(buckets[second])
        timeline.append(
            [
                second,
                len(values),
                round(percentile(values, 50) * 1e3, 2),
                round(percentile(values, 99) * 1e3, 2),
            ]
        )
    return timeline


def sample_plateau(
    service: Service,
    upstream: GeventUpstream,
    plateau: tuple[float, float],
    samples: list[dict[str, Any]],
    cpu: dict[str, Any],
    pids: dict[str, int],
) -> None:
    """Called every 0.25 s while the clients run: worker RSS, open upstream streams, CPU."""
    now = time.time()
    try:
        open_streams = upstream.stats()["open_streams"]
    except (OSError, http.client.HTTPException):
        open_streams = -1
    samples.append({"t": now, "rss_kib": service.rss_kib(), "open_streams": open_streams})
    meter = cpu.get("meter")
    if meter is None and plateau[0] <= now < plateau[1]:
        cpu["meter"] = CpuMeter({**pids, "harness": os.getpid()})
    elif isinstance(meter, CpuMeter) and now >= plateau[1]:
        cpu["meter"] = "done"
        cpu.update(meter.stop())


def run_clients(
    run: Run,
    port: int,
    streams: int,
    chunks: int,
    interval: float,
    ramp: float,
    processes: int,
    start_at: float | None = None,
    during: Callable[[dict[str, int]], None] | None = None,
) -> dict[str, Any]:
    """Run ``streams`` streams from ``processes`` client processes; merged results."""
    start_at = start_at or time.time() + 1.0
    procs = []
    outputs = []
    for index in range(processes):
        share = streams // processes + (1 if index < streams % processes else 0)
        out = run.workdir / f"client-{run.counter + 1}-{index}.json"
        outputs.append(out)
        command = [run.python, str(BENCH / "streamclient.py"), "--port", str(port)]
        command += ["--streams", str(share), "--chunks", str(chunks), "--interval", str(interval)]
        command += ["--ramp", str(ramp), "--phase", str(index / processes)]
        command += ["--start-at", f"{start_at:.6f}", "--out", str(out)]
        procs.append(run.procs.start(run.name("client"), command))
    clients = {f"client{index}": proc.pid for index, proc in enumerate(procs)}
    deadline = start_at + ramp + chunks * interval + 90
    try:
        while not all(has_exited(proc) for proc in procs):
            if time.time() > deadline:
                raise BenchError("the stream clients did not finish in time")
            if during is not None and time.time() >= start_at - 0.5:
                during(clients)
            time.sleep(0.25)
    finally:
        for proc in procs:
            run.procs.stop(proc)
    chunks: list[list[Any]] = []
    first: list[float] = []
    errors: Counter[str] = Counter()
    details = []
    failed = 0
    for proc, out in zip(procs, outputs, strict=True):
        if proc.returncode != 0 or not out.exists():
            raise BenchError(f"a stream client failed ({proc.returncode})")
        doc = json.loads(out.read_text())
        chunks.extend(doc["chunks"])
        first.extend(o - s for s, o, _c in doc["stream_times"] if o is not None)
        errors.update(doc["errors"])
        failed += doc["streams"] - doc["ok"]
        lag = doc["loop_lag_ms"]
        details.append(
            {
                "streams": doc["streams"],
                "ok": doc["ok"],
                "cpu_seconds": round(doc["cpu_seconds"], 2),
                "loop_lag_ms": {
                    "p50": percentile(lag, 50),
                    "p99": percentile(lag, 99),
                    "max": lag[-1] if lag else None,
                },
            }
        )
    first.sort()
    return {
        "failed": failed,
        "chunks": chunks,
        "error_kinds": dict(errors.most_common(5)),
        "first_chunk_s": {
            "p50": round(percentile(first, 50), 3),
            "p99": round(percentile(first, 99), 3),
            "max": round(first[-1], 3) if first else None,
        },
        "clients": details,
    }


def scenario_model(run: Run, result: Scenario) -> None:
    """Embedded model tokens/s through the service vs llama-cpp-python directly."""
    sys.path.insert(0, str(ROOT))
    from chatservice.backends.local import bundled_model_path

    args = run.args
    threads = args.threads or max(1, (os.cpu_count() or 1) // 2)
    max_tokens = args.max_tokens
    request = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": MODEL_PROMPT}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    path = bundled_model_path()
    upstream = GeventUpstream(run)
    extra = {
        "LOCAL_THREADS": str(threads),
        "LOCAL_PRELOAD": "1",
        "LOCAL_CONTEXT_TOKENS": str(MODEL_CONTEXT),
        # The same generation as llama_direct.py (no system prompt, greedy, no repeat penalty);
        # the loop guard stays on, so its per-token cost is in the figure.
        "LOCAL_SYSTEM_PROMPT": "",
        "LOCAL_TEMPERATURE": "0",
        "LOCAL_REPEAT_PENALTY": "1",
    }
    service = Service(run, upstream.url, extra, ready_timeout=180)
    command = [run.python, str(BENCH / "llama_direct.py"), "--model", path]
    command += ["--threads", str(threads), "--ctx", str(MODEL_CONTEXT)]
    command += ["--request", json.dumps(request)]
    direct = run.procs.start(run.name("llama-direct"), command, stdout_pipe=True, stdin_pipe=True)
    if read_line(direct, 180, "bench/llama_direct.py") != "READY":
        raise BenchError("bench/llama_direct.py did not get ready")
    stream_model(service.port, {**request, "max_tokens": 8})  # warm the service's path too
    runs: dict[str, list[dict[str, Any]]] = {"service": [], "direct": []}
    for _ in range(args.model_repeats):
        assert direct.stdin is not None
        direct.stdin.write(b"run\n")
        direct.stdin.flush()
        runs["direct"].append(json.loads(read_line(direct, 600, "bench/llama_direct.py")))
        runs["service"].append(stream_model(service.port, request))
    run.procs.stop(direct)

    def rate(item: dict[str, Any]) -> float:
        return item["tokens"] / item["seconds"]

    # The best run of each side: other work on the machine only ever slows a run down, so
    # the fastest is the least disturbed (medians are in the details).
    service_rate = max(rate(r) for r in runs["service"])
    direct_rate = max(rate(r) for r in runs["direct"])
    ratio = 100 * service_rate / direct_rate
    result.metric("tokens/s through the service (stream, best run)", None, service_rate, "tok/s")
    result.metric("tokens/s, llama-cpp-python directly (best run)", None, direct_rate, "tok/s")
    result.metric("service / direct", "tokens_ratio_pct", ratio, "%")
    # Where the difference goes: the service's extra time spread over its tokens.
    tokens = max(1, runs["service"][0]["tokens"])
    extra = (tokens / service_rate - tokens / direct_rate) / tokens
    result.metric("service's added time per token", None, extra * 1000, "ms")
    result.details["median_tokens_per_s"] = {
        name: round(statistics.median(rate(r) for r in items), 2) for name, items in runs.items()
    }
    result.details.update(
        {
            "model_path": path,
            "n_threads": threads,
            "n_ctx": MODEL_CONTEXT,
            "max_tokens": max_tokens,
            "same_text": all(
                s["text"] == d["text"] for s, d in zip(runs["service"], runs["direct"], strict=True)
            ),
            "runs": {
                name: [
                    {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                    | {"text": r["text"][:80]}
                    for r in items
                ]
                for name, items in runs.items()
            },
        }
    )
    if result.missed and args.profile:
        with py_spy(run, service.worker, runs["service"][0]["seconds"], "model") as profile:
            stream_model(service.port, request)
        result.details["profile"] = profile
    service.stop()
    upstream.stop()


def stream_model(port: int, request: dict[str, Any]) -> dict[str, Any]:
    """One streamed chat completion through the service; tokens = chunks with content."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    started = time.perf_counter()
    first = None
    tokens = 0
    text = []
    try:
        conn.request(
            "POST",
            "/api/v1/chat/completions",
            body=json.dumps({**request, "stream": True}).encode(),
            headers={"Content-Type": "application/json"},
        )
        response = conn.getresponse()
        if response.status != 200:
            raise BenchError(f"the model stream answered {response.status}: {response.read()!r}")
        while True:
            line = response.readline()
            if not line:
                raise BenchError("the model stream ended without [DONE]")
            if not line.startswith(b"data: "):
                continue
            data = line[6:].strip()
            if data == b"[DONE]":
                break
            content = json.loads(data)["choices"][0]["delta"].get("content")
            if content:
                tokens += 1
                text.append(content)
                if first is None:
                    first = time.perf_counter() - started
    finally:
        conn.close()
    return {
        "tokens": tokens,
        "seconds": time.perf_counter() - started,
        "first_token_seconds": first,
        "text": "".join(text),
    }


# --- the command ------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark one gevent worker of chatservice on 127.0.0.1.",
    )
    parser.add_argument("--quick", action="store_true", help="short runs, a smoke test")
    parser.add_argument(
        "--only", action="append", choices=SCENARIOS, help="run only this scenario (repeatable)"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="results directory")
    parser.add_argument("--streams", type=int, help="concurrent streams (2000; quick: 200)")
    parser.add_argument("--stream-seconds", type=float, help="stream length (10; quick: 3)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between chunks")
    parser.add_argument("--clients", type=int, default=2, help="stream client processes")
    parser.add_argument(
        "--ramp", type=float, default=2.0, help="seconds over which the streams start (2)"
    )
    parser.add_argument("--wrk-seconds", type=float, help="each wrk run (10; quick: 2)")
    parser.add_argument(
        "--latency-rounds", type=int, help="alternating rounds of the 1-connection runs (5)"
    )
    parser.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="compare with LiteLLM's proxy and a naive proxy (default: on, off with --quick)",
    )
    parser.add_argument("--peer-rounds", type=int, default=5, help="interleaved peer rounds")
    parser.add_argument("--threads", type=int, default=0, help="LOCAL_THREADS (0: service's)")
    parser.add_argument("--max-tokens", type=int, help="model scenario (200; quick: 48)")
    parser.add_argument("--model-repeats", type=int, help="interleaved runs (5; quick: 1)")
    parser.add_argument(
        "--upstream", choices=("auto", "gevent"), default="auto", help="non-streaming upstream"
    )
    parser.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="profile missed targets with py-spy (default: on, off with --quick)",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        help="before each scenario, wait up to this many seconds for other processes to use "
        "less than half a core (60; quick: 0)",
    )
    parser.add_argument(
        "--nice",
        type=int,
        default=0,
        help="run the harness and everything it starts at this nice value (negative: ahead "
        "of other work on a shared machine; needs root)",
    )
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    parser.add_argument("--keep", action="store_true", help="keep the logs' temporary directory")
    args = parser.parse_args(argv)
    quick = args.quick
    args.streams = args.streams or (200 if quick else 2000)
    args.stream_seconds = args.stream_seconds or (3.0 if quick else 10.0)
    args.wrk_seconds = args.wrk_seconds or (2.0 if quick else 10.0)
    args.max_tokens = args.max_tokens or (48 if quick else 200)
    args.latency_rounds = args.latency_rounds or (1 if quick else 5)
    args.model_repeats = args.model_repeats or (1 if quick else 5)
    if args.wait_quiet is None:
        args.wait_quiet = 0.0 if quick else 60.0
    if args.profile is None:
        args.profile = not quick
    if args.peers is None:
        args.peers = not quick
    args.only = args.only or list(SCENARIOS)
    args.out = args.out.resolve()
    args.stamp = time.strftime("%Y%m%dT%H%M%S")
    return args


def wait_quiet(limit: float, threshold: float = 0.5) -> dict[str, float]:
    """Wait up to ``limit`` seconds until other processes use less than ``threshold`` cores
    (measured over 2 s); returns the seconds waited and the last background reading."""
    started = time.monotonic()
    while True:
        meter = CpuMeter({"harness": os.getpid()})
        time.sleep(2.0)
        others = meter.stop()["others"]
        waited = time.monotonic() - started
        if others < threshold or waited >= limit:
            return {"waited_s": round(waited, 1), "background_cores_before": others}
        log.info("other processes use %.2f cores: waiting for a quieter machine", others)


def format_value(value: float) -> str:
    """A number for the table: integers as such, otherwise 2 or 3 significant decimals."""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(results: list[Scenario]) -> str:
    """The results as a Markdown table (it goes in the README as is)."""
    lines = [
        "| scenario | metric | measured | target | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scenario in results:
        if scenario.error:
            lines.append(f"| {scenario.name} | (could not run) | {scenario.error[:80]} | | error |")
        for row in scenario.rows:
            measured = f"{format_value(row['value'])} {row['unit']}".strip()
            outcome = "" if "pass" not in row else ("pass" if row["pass"] else "**miss**")
            target = row.get("target", "")
            if target:
                target = f"{target} {row['unit']}".strip()
            lines.append(
                f"| {scenario.name} | {row['metric']} | {measured} | {target} | {outcome} |"
            )
    return "\n".join(lines)


def check_tools(args: argparse.Namespace) -> None:
    """Stop early, with the install command, when a scenario's tool is missing."""
    if "nonstream" in args.only and shutil.which("wrk") is None:
        raise SystemExit(
            "bench: the nonstream scenario needs wrk: apt-get install -y wrk "
            "(and nginx for the fastest upstream: apt-get install -y nginx-light)"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the chosen scenarios; print the table; write the JSON results."""
    ensure_venv()
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s")
    check_tools(args)
    if args.nice:
        # Inherited by every process started from here on.
        try:
            os.setpriority(os.PRIO_PROCESS, 0, args.nice)
            set_autogroup_nice(os.getpid(), args.nice)
        except OSError as exc:
            raise SystemExit(f"bench: cannot set nice {args.nice}: {exc}") from None
    nofile = raise_open_files(2 * args.streams + 1024)
    if nofile < 2 * args.streams + 256:
        log.warning("open-file limit %d is low for %d streams", nofile, args.streams)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.out == DEFAULT_OUT:
        # Like pytest's cache folder: results are local measurements, never committed.
        (args.out / ".gitignore").write_text("# written by bench/run.py\n*\n")
    # SIGTERM ends the run like Ctrl-C: the finally clauses stop every process.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    workdir = Path(tempfile.mkdtemp(prefix="chatservice-bench-"))
    run = Run(args, workdir)
    env = environment()
    if env["loadavg_start"][0] > 0.5 * (os.cpu_count() or 1):
        log.warning(
            "load average %.2f: other work is using the CPU, results will be pessimistic",
            env["loadavg_start"][0],
        )
    results: list[Scenario] = []
    functions = {
        "idle_memory": scenario_idle_memory,
        "nonstream": scenario_nonstream,
        "upstreams": scenario_upstreams,
        "streaming": scenario_streaming,
        "model": scenario_model,
    }
    try:
        for name in SCENARIOS:
            if name not in args.only:
                continue
            scenario = Scenario(name)
            results.append(scenario)
            meter: CpuMeter | None = None
            log.info(
                "scenario %s: starting (load average %s)", name, scenario.details["loadavg_start"]
            )
            try:
                if args.wait_quiet > 0:
                    scenario.details.update(wait_quiet(args.wait_quiet))
                meter = CpuMeter({"harness": os.getpid()}, reaped_children=True)
                functions[name](run, scenario)
                if name == "streaming" and scenario.missed and args.profile:
                    log.info("streaming: missed a target, running it again under py-spy")
                    again = Scenario(name)
                    scenario_streaming(run, again, profile=True)
                    scenario.details["profile_run"] = {
                        "metrics": again.rows,
                        "profile": again.details.get("profile"),
                    }
            except BenchError as exc:
                scenario.error = str(exc)
                log.error("scenario %s could not run: %s", name, exc)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not lose the rest
                scenario.error = f"{type(exc).__name__}: {exc}"
                log.exception("scenario %s failed", name)
            finally:
                run.procs.stop_all()
            # The machine's busy time less the harness's and its (now reaped) children's.
            if meter is not None:
                scenario.details["background_cores"] = meter.stop()["others"]
                scenario.metric(
                    "CPU used by other processes meanwhile",
                    None,
                    scenario.details["background_cores"],
                    "cores",
                )
            scenario.details["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
            for row in scenario.rows:
                log.info(
                    "%s: %s = %s %s (target %s)",
                    name,
                    row["metric"],
                    format_value(row["value"]),
                    row["unit"],
                    row.get("target", "none"),
                )
    finally:
        run.procs.stop_all()
        if args.keep:
            log.info("logs kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    document = {
        "timestamp": args.stamp,
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "environment": env,
        "scenarios": {scenario.name: scenario.to_json() for scenario in results},
    }
    text = json.dumps(document, indent=1, default=str)
    (args.out / f"{args.stamp}.json").write_text(text)
    (args.out / "latest.json").write_text(text)
    sys.stdout.write(table(results) + "\n")
    notes = []
    for scenario in results:
        for row in scenario.missed:
            notes.append(f"- {scenario.name}: {row['metric']}: {miss_note(row)}")
        for key in ("note_open_streams",):
            if key in scenario.details:
                notes.append(f"- {scenario.name}: {scenario.details[key]}")
    if notes:
        sys.stdout.write("\n" + "\n".join(notes) + "\n")
    sys.stdout.write(
        f"\nload average {env['loadavg_start']} -> {env['loadavg_end']}; "
        f"results in {args.out / (args.stamp + '.json')}\n"
    )
    if any(scenario.error for scenario in results):
        return 2
    if args.strict and any(scenario.missed for scenario in results):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
