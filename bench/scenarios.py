"""The benchmark's scenarios (idle_memory, nonstream, streaming, model; described in
bench/run.py) and what they start: the service, the upstreams, wrk, py-spy."""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import logging
import os
import re
import shutil
import signal
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from procs import (  # bench/procs.py, beside this module
    BenchError,
    CpuMeter,
    Processes,
    children,
    cpu_seconds,
    free_port,
    has_exited,
    http_json,
    read_line,
    rss_kib,
    tool,
    wait_exit,
    wait_healthy,
    wait_port,
)
from report import Scenario, percentile

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
log = logging.getLogger("bench")

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


def bench_settings(upstream_url: str, config_file: str) -> dict[str, str]:
    """The service's settings in every scenario (and bench/callcount.py): one upstream key, no
    rate limits, memory stores, ``config_file`` (an empty TOML file) as its configuration."""
    return {
        "API_KEY": "sk-bench-0000000000000000000000000000",
        "UPSTREAM_BASE_URL": upstream_url,
        "STORE_URL": "memory://",
        "SHARED_STATE_URL": "memory://",
        "HOUR_LIMIT": "0",
        "MINUTE_LIMIT": "0",
        "SECOND_LIMIT": "0",
        "UPSTREAM_RPM": "0",
        "CONFIG_FILE": config_file,
    }


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
                **bench_settings(upstream_url, str(run.empty_config)),
                **(extra or {}),
            }
        )
        self.env = env
        self.run = run
        self.proc = run.procs.start(
            self.log_name, [run.python, str(ROOT / "app.py")], env=env, stop_signal=signal.SIGQUIT
        )
        self.worker = wait_healthy(
            self.port,
            self.proc,
            ready_timeout,
            lambda: run.procs.log_tail(self.log_name),
            workers=1,
        )[0]

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
    # wrk reads whole seconds only ("-d2.5s" is a usage error).
    duration = max(1, round(seconds))
    command = ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "5s"]
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
    """Throughput at 64 connections and added latency at 1, both faces; with the peers, the
    naive proxy's added latency in the same rounds and its throughput beside the service's."""
    seconds = run.args.wrk_seconds
    warm = max(1.0, seconds / 5)
    if shutil.which("nginx") and run.args.upstream != "gevent":
        upstream: NginxUpstream | GeventUpstream = NginxUpstream(run)
    else:
        upstream = GeventUpstream(run)
    result.details["upstream"] = upstream.kind
    service = Service(run, upstream.url)
    result.details["worker_pid"] = service.worker
    # The naive proxy, the stack's ceiling, is started first: its added latency is measured in
    # the service's own rounds, and the peer rounds below reuse it.
    naive: Any = None
    if run.args.peers:
        import peers  # bench/peers.py, beside this script

        try:
            naive = peers.start_naive(run, upstream.url)
            wrk(run, naive.url, UPSTREAM_BODY, 1, warm)
        except peers.PeerError as exc:
            naive = exc
    started = None if isinstance(naive, Exception) else naive
    try:
        nonstream_rounds(run, result, service, upstream, started)
        if run.args.peers:
            nonstream_peers(run, result, service, upstream, naive)
    finally:
        if started is not None:
            run.procs.stop(started.proc)
    if result.missed and run.args.profile:
        pids = {"worker": service.worker, "upstream": upstream.proc.pid}
        for name, path, body, _check in ENDPOINTS:
            rows = [r for r in result.missed if r["metric"].startswith(path + ":")]
            if not rows:
                continue
            with py_spy(run, service.worker, seconds, f"nonstream-{name}") as profile:
                profile["run"] = wrk(run, service.url + path, body, 64, seconds, pids)
            result.details[name]["profile"] = profile
    service.stop()
    upstream.stop()


def nonstream_rounds(
    run: Run,
    result: Scenario,
    service: Service,
    upstream: NginxUpstream | GeventUpstream,
    naive: Any,
) -> None:
    """Each endpoint's throughput at 64 connections, then its added latency at one: the
    upstream alone and through the service in alternating rounds, and through the naive
    proxy ``naive`` (a started :class:`peers.Peer`, else nothing) in the same rounds."""
    seconds = run.args.wrk_seconds
    warm = max(1.0, seconds / 5)
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
        # The naive proxy gets what the service sends upstream (its one route is OpenAI's).
        rounds = run.args.latency_rounds
        alone_runs, single_runs, naive_runs = [], [], []
        for _ in range(rounds):
            alone_runs.append(wrk(run, upstream_url, UPSTREAM_BODY, 1, seconds / rounds, pids))
            single_runs.append(wrk(run, url, body, 1, seconds / rounds, pids))
            if naive is not None:
                naive_runs.append(wrk(run, naive.url, UPSTREAM_BODY, 1, seconds / rounds))
        alone, single = median_of_rounds(alone_runs), median_of_rounds(single_runs)
        added = added_ms(single, alone)
        result.metric(f"{path}: throughput, 64 connections", "throughput_rps", busy["rps"], "req/s")
        for q in ("p50", "p99"):
            label = f"{path}: added latency {q}, 1 connection"
            result.metric(label, f"added_{q}_ms", added[q], "ms")
        details: dict[str, Any] = {
            "path": path,
            "throughput_64": busy,
            "service_1": single,
            "upstream_alone_1": alone,
            "added_ms": {"service": added},
        }
        if naive_runs:
            naive_1 = median_of_rounds(naive_runs)
            details["naive_1"] = naive_1
            details["added_ms"]["naive"] = naive_added = added_ms(naive_1, alone)
            for q in ("p50", "p99"):
                result.metric(
                    f"{path}: naive Flask + urllib3 proxy's added latency {q}, same rounds",
                    None,
                    naive_added[q],
                    "ms",
                )
        # CPU per request depends much less than req/s on what else runs on the machine.
        cpu_us = worker_cpu_us(busy)
        result.metric(f"{path}: worker CPU per request, 64 connections", None, cpu_us, "µs")
        errors = busy["error_count"] + single["error_count"] + alone["error_count"]
        result.metric(f"{path}: wrk errors (socket, non-2xx)", "errors", errors, "")
        result.details[name] = details


def added_ms(through: dict[str, Any], alone: dict[str, Any]) -> dict[str, float]:
    """Added latency p50 and p99 (ms): :func:`median_of_rounds` of the runs through a proxy
    minus that of the upstream alone."""
    return {q: (through["latency_us"][q] - alone["latency_us"][q]) / 1000 for q in ("p50", "p99")}


def nonstream_peers(
    run: Run,
    result: Scenario,
    service: Service,
    upstream: NginxUpstream | GeventUpstream,
    naive: Any,
) -> None:
    """The peer rounds (bench/peers.py) on the OpenAI face, the naive proxy ``naive`` (a
    started :class:`peers.Peer`, or the error its start raised) among them; its median req/s
    goes beside the first throughput row."""
    import peers  # bench/peers.py, beside this script

    rounds, round_seconds = run.args.peer_rounds, max(2.0, run.args.wrk_seconds / 2)
    compared = peers.compare(
        run,
        service.url + ENDPOINTS[0][1],
        upstream.url,
        wrk,
        rounds,
        round_seconds,
        service.worker,
        started={"naive": naive},
    )
    result.details["peers"] = compared
    # Labels stay the same from run to run (--repeat merges by label); the rounds'
    # spreads are in the details.
    naive_rps = compared["sides"].get("naive", {}).get("median_rps")
    if naive_rps:
        # Beside the 1,500 req/s target: whether the stack's ceiling itself reaches it.
        result.metric(
            f"naive Flask + urllib3 proxy (the ceiling): throughput, 64 connections, median "
            f"of {rounds} peer rounds",
            None,
            naive_rps,
            "req/s",
            after=f"{ENDPOINTS[0][1]}: throughput, 64 connections",
        )
    result.metric(
        f"peers: service req/s, median of {rounds} rounds",
        None,
        compared["sides"]["service"]["median_rps"],
        "req/s",
    )
    for side in ("service", "naive"):
        cpu_us = compared["sides"].get(side, {}).get("cpu_per_request_us")
        if cpu_us is not None:
            label = "service's worker" if side == "service" else "naive proxy's"
            result.metric(f"peers: {label} CPU per request, same rounds", None, cpu_us, "µs")
    for key, label in (
        ("times_litellm", "times LiteLLM's req/s"),
        ("pct_of_naive", "% of the naive Flask + urllib3 proxy's req/s"),
    ):
        if key in compared:
            result.metric(f"peers: service {label}", key, compared[key], "")
        else:
            name = key.split("_", 2)[-1]
            result.details.setdefault("peer_errors", {})[name] = compared["sides"][name]


def scenario_upstreams(run: Run, result: Scenario) -> None:
    """Non-streaming throughput and worker CPU per request (OpenAI face, 64 connections)
    with three ``[[upstreams]]`` against one upstream (no list), in interleaved rounds.

    The three entries have equal priority and weight (every call goes through the weighted
    choice and a breaker), one key each like the one-upstream service's API_KEY, and name
    the same upstream process, as the one upstream does: the upstream's own speed and the
    connections the service keeps to it (one host: one shared keep-alive set, the same pool
    size) are the same on both sides, and only the routing differs. Each round runs both
    sides back to back, alternating which goes first; the ratios are the medians of the
    rounds' own ratios (a burst of other work spoils one pair, not one side), with their
    spread. CPU per request, from the worker's /proc/<pid>/stat, depends far less than req/s
    on what else runs on the machine.
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
            measured = wrk(run, service.url + path, body, 64, seconds, pids)
            measured["cpu_us_per_request"] = round(worker_cpu_us(measured), 1)
            runs[label].append(measured)
    for label, measured in runs.items():
        rps = [r["rps"] for r in measured]
        cpu = [r["cpu_us_per_request"] for r in measured]
        result.metric(
            f"{path}: throughput, {label}, median of {rounds} rounds",
            None,
            statistics.median(rps),
            "req/s",
        )
        result.metric(
            f"{path}: worker CPU per request, {label}, median of {rounds} rounds",
            None,
            statistics.median(cpu),
            "µs",
        )
        errors = sum(r["error_count"] for r in measured)
        result.metric(f"{path}: wrk errors, {label}", "errors", errors, "")
    one, three = runs["one upstream"], runs["three upstreams"]
    rps_ratios = [100.0 * t["rps"] / max(1.0, o["rps"]) for o, t in zip(one, three, strict=True)]
    cpu_ratios = [
        100.0 * t["cpu_us_per_request"] / max(1.0, o["cpu_us_per_request"])
        for o, t in zip(one, three, strict=True)
    ]
    result.metric(
        "three upstreams vs one: throughput, median of the rounds' ratios",
        "upstreams_ratio_pct",
        statistics.median(rps_ratios),
        "%",
    )
    result.metric(
        "three upstreams vs one: worker CPU per request, median of the rounds' ratios",
        "upstreams_cpu_pct",
        statistics.median(cpu_ratios),
        "%",
    )
    result.details["rounds"] = runs
    result.details["ratios_pct"] = {"throughput": rps_ratios, "cpu_per_request": cpu_ratios}
    if result.missed and run.args.profile:
        for label, service in services.items():
            pids = {"worker": service.worker, "upstream": upstream.proc.pid}
            with py_spy(run, service.worker, seconds, "upstreams-" + label.split()[0]) as profile:
                profile["run"] = wrk(run, service.url + path, body, 64, seconds, pids)
            result.details.setdefault("profiles", {})[label] = profile
    for service in services.values():
        service.stop()
    upstream.stop()


def worker_cpu_us(measured: dict[str, Any]) -> float:
    """The worker's CPU time per request (µs) in one :func:`wrk` run metering ``worker``."""
    seconds = measured["cpu_cores"]["worker"] * measured["duration_us"] / 1e6
    return seconds * 1e6 / max(1, measured["requests"])


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
                service, upstream, plateau, samples, cpu, {**pids, **clients}, streams
            ),
        )
    up = upstream.stats()
    plateau_samples = [s for s in samples if plateau[0] <= s["t"] <= plateau[1]]
    if not plateau_samples:
        raise BenchError("no memory sample fell inside the plateau")
    peak = max(s["rss_kib"] for s in plateau_samples)
    # All open at once: the most the upstream held in one plateau sample. The median shows
    # how long the last ones took to open (a worker saturated while the streams start).
    open_streams = max(s["open_streams"] for s in plateau_samples)
    open_median = statistics.median(s["open_streams"] for s in plateau_samples)
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
    result.metric("streams open, median of the plateau's samples", None, open_median, "")
    result.metric(
        "time from a stream's request to its first chunk, p99",
        None,
        outcome["first_chunk_s"]["p99"] * 1e3,
        "ms",
    )
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
    per_chunk = None
    window = cpu.get("window", list(plateau))
    metered = in_window(received, window)
    if worker_cores is not None and metered:
        per_chunk = worker_cores * (window[1] - window[0]) / metered * 1e6
        result.metric("worker CPU per relayed chunk", "cpu_per_chunk_us", per_chunk, "µs")
        parts = split_per_chunk(cpu, window, metered)
        result.details["cpu_per_chunk_split_us"] = parts
        for part, label in SPLIT_LABELS:
            result.metric(f"worker CPU per relayed chunk: {label}", None, parts[part], "µs")
    result.metric(
        f"chunks relayed per second in the plateau (open streams x {1 / interval:g})",
        None,
        in_plateau / max(1e-6, plateau[1] - plateau[0]),
        "/s",
    )
    if open_median < streams:
        result.details["note_open_streams"] = (
            f"at most {open_streams:g} of {streams} streams were open at once, {open_median:g} "
            "in the plateau's median sample: streams that start while the worker is saturated "
            "wait in its accept queue and open late (see the time to the first chunk)"
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
    if args.peers and not profile:
        naive = naive_streaming(run, upstream, streams, chunks, interval, ramp)
        result.details["naive"] = naive
        if per_chunk is not None and naive.get("cpu_per_chunk_us"):
            result.metric(
                "naive Flask + urllib3 relay: worker CPU per relayed chunk, same run",
                None,
                naive["cpu_per_chunk_us"],
                "µs",
            )
            for part, label in SPLIT_LABELS:
                result.metric(
                    f"naive Flask + urllib3 relay: worker CPU per relayed chunk: {label}",
                    None,
                    naive["cpu_per_chunk_split_us"][part],
                    "µs",
                )
            result.metric(
                "service's CPU per relayed chunk as a percentage of the naive relay's",
                None,
                100 * per_chunk / naive["cpu_per_chunk_us"],
                "%",
            )
        # The floor of gunicorn + gevent alone: no Flask, no urllib3, the upstream's chunks
        # found with bytes searches on a raw socket.
        raw = naive_streaming(run, upstream, streams, chunks, interval, ramp, "raw_relay:app")
        result.details["raw_relay"] = raw
        if raw.get("cpu_per_chunk_us"):
            result.metric(
                "bare WSGI raw-socket relay (gunicorn + gevent alone): worker CPU per relayed "
                "chunk, same run",
                None,
                raw["cpu_per_chunk_us"],
                "µs",
            )
            for part, label in SPLIT_LABELS:
                result.metric(
                    f"bare WSGI raw-socket relay: worker CPU per relayed chunk: {label}",
                    None,
                    raw["cpu_per_chunk_split_us"][part],
                    "µs",
                )
    upstream.stop()


#: The two parts of a relay worker's CPU per chunk (:func:`split_per_chunk`) and their labels.
SPLIT_LABELS = (
    ("user", "user time (Python, gevent, libc)"),
    ("system", "system time (kernel: syscalls, loopback TCP)"),
)


def split_per_chunk(cpu: dict[str, Any], window: list[float], chunks: int) -> dict[str, float]:
    """The worker's user and system (kernel) CPU per chunk (µs) in the metered ``window``,
    from a :func:`meter_plateau` reading of ``chunks`` relayed chunks. On loopback the system
    part holds much of the receiving side's TCP work too: the kernel runs it in the sending
    process's context and charges it there."""
    us_per_core = (window[1] - window[0]) / max(1, chunks) * 1e6  # a core's µs per chunk
    return {
        "user": round(cpu.get("worker_user", 0.0) * us_per_core, 1),
        "system": round(cpu.get("worker_system", 0.0) * us_per_core, 1),
    }


def naive_streaming(
    run: Run,
    upstream: GeventUpstream,
    streams: int,
    chunks: int,
    interval: float,
    ramp: float,
    app: str = "naive_proxy:app",
) -> dict[str, Any]:
    """The same streams, same upstream, through ``naive_proxy.py``'s relay (or ``app``, e.g.
    ``raw_relay:app``) under gunicorn's gevent worker: the stack's floor. Its worker's CPU per
    chunk relayed in the plateau (µs; ``cpu_per_chunk_split_us``: its user and system parts),
    failed streams, open streams and the forwarding delay p99 (client's receive, ms)."""
    import peers  # bench/peers.py, beside this script

    try:
        peer = peers.start_naive(run, upstream.url, pool=streams, app=app)
    except peers.PeerError as exc:
        return {"error": str(exc)}
    try:
        worker = children(peer.pid)[0]
        warm = run_clients(run, peer.port, 20, 3, 0.01, 0.2, 1, path=peers.PATH)
        if warm["failed"]:
            return {"error": f"warm-up streams failed: {warm['error_kinds']}"}
        start_at = time.time() + 2.0
        plateau = (start_at + ramp + 0.5, start_at + chunks * interval - 0.2)
        cpu: dict[str, Any] = {}
        opened: list[int] = []

        def during(_clients: dict[str, int]) -> None:
            now, count = time.time(), -1
            with contextlib.suppress(OSError, http.client.HTTPException):
                count = upstream.stats()["open_streams"]
            if plateau[0] <= now <= plateau[1]:
                opened.append(count)
            meter_plateau(cpu, plateau, {"worker": worker}, count >= streams)

        outcome = run_clients(
            run,
            peer.port,
            streams,
            chunks,
            interval,
            ramp,
            run.args.clients,
            start_at=start_at,
            during=during,
            path=peers.PATH,
        )
    finally:
        run.procs.stop(peer.proc)
    window = cpu.get("window", list(plateau))
    steady = in_window(outcome["chunks"], window)
    out: dict[str, Any] = {
        "failed_streams": outcome["failed"],
        "open_streams": statistics.median(opened) if opened else None,
        "delay_p99_ms": round(percentile(sorted(c[1] for c in outcome["chunks"]), 99) * 1e3, 2),
        "cpu_cores_plateau": {k: v for k, v in cpu.items() if k != "meter"},
    }
    if cpu.get("worker") is not None and steady:
        out["cpu_per_chunk_us"] = round(cpu["worker"] * (window[1] - window[0]) / steady * 1e6, 1)
        out["cpu_per_chunk_split_us"] = split_per_chunk(cpu, window, steady)
    return out


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
    streams: int,
) -> None:
    """Called every 0.25 s while the clients run: worker RSS, open upstream streams, CPU
    (once all ``streams`` are open, see :func:`meter_plateau`)."""
    now = time.time()
    try:
        open_streams = upstream.stats()["open_streams"]
    except (OSError, http.client.HTTPException):
        open_streams = -1
    samples.append({"t": now, "rss_kib": service.rss_kib(), "open_streams": open_streams})
    meter_plateau(cpu, plateau, {**pids, "harness": os.getpid()}, open_streams >= streams)


def meter_plateau(
    cpu: dict[str, Any], plateau: tuple[float, float], pids: dict[str, int], all_open: bool
) -> None:
    """Called as the clients run: a CPU meter of ``pids`` from the plateau's start, or later
    once ``all_open`` (streams still opening late cost the worker more than relaying; from
    the plateau's middle whatever happens), to its end; its cores and ``window`` (wall-clock
    start and end) put into ``cpu`` once the plateau is over."""
    now = time.time()
    meter = cpu.get("meter")
    ready = all_open or now >= (plateau[0] + plateau[1]) / 2
    if meter is None and plateau[0] <= now < plateau[1] and ready:
        cpu["meter"] = CpuMeter(pids, split=("worker",))
        cpu["window"] = [now, plateau[1]]
    elif isinstance(meter, CpuMeter) and now >= plateau[1]:
        cpu["meter"] = "done"
        cpu["window"][1] = now
        cpu.update(meter.stop())


def in_window(chunks: list[list[Any]], window: list[float]) -> int:
    """How many chunks arrived within ``window`` (wall-clock start and end)."""
    return sum(1 for c in chunks if window[0] <= c[0] <= window[1])


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
    path: str = "/api/v1/chat/completions",
) -> dict[str, Any]:
    """Run ``streams`` streams to ``path`` from ``processes`` client processes; merged
    results."""
    start_at = start_at or time.time() + 1.0
    procs = []
    outputs = []
    for index in range(processes):
        share = streams // processes + (1 if index < streams % processes else 0)
        out = run.workdir / f"client-{run.counter + 1}-{index}.json"
        outputs.append(out)
        command = [run.python, str(BENCH / "streamclient.py"), "--port", str(port)]
        command += ["--path", path]
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
