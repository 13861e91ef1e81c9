"""Python calls and profiled time per non-streamed request, in one process, under cProfile.

The machine's CPU speed drifts too much for CPU time or requests/s to judge a change of a
few per cent; the number of Python calls a request makes does not drift. This script sends
whole (non-streamed) requests through Flask's test client to:

- the service's ``/api/v1/chat/completions`` (OpenAI-compatible face), ``/api`` (the Docker
  ChatGPT API platform's face), and ``/v1/chat/completions`` (the OpenAI-compatible face of a
  second app with ``ROUTE`` empty, the path the benchmark's peers are measured on);
- ``bench/naive_proxy.py``'s app on ``/v1/chat/completions``: the floor of Flask + urllib3.

Every app calls the benchmark's fake upstream (``bench/upstream.py``, its own process on
127.0.0.1, real sockets, keep-alive) with the benchmark's bodies (:data:`scenarios.ENDPOINTS`).
The service runs with the benchmark's settings (one upstream key, no rate limits, memory
stores, text access log to stderr, which goes to ``--log``, /dev/null by default).

Printed per path: Python calls per request (cProfile's count, the test client's own calls
included: they are the same on every path), profiled time per request (µs, cProfile's
overhead included: compare paths within one run only), and the calls by package. Then, for
the service's paths, the functions of ``chatservice`` with the most own time (tottime). With
``--cpu-rounds N``, also this thread's CPU time per request without the profiler (median of
N interleaved rounds; the upstream's time is another process's), as noisy as the machine.

Run: ``.venv/bin/python bench/callcount.py [--requests 300] [--top 25] [--json FILE]
[--cpu-rounds 5]``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]  # bench/procs.py and the chatservice package

from procs import BenchError, Processes, read_line  # noqa: E402 - after the path
from scenarios import ENDPOINTS, bench_settings  # noqa: E402

#: Requests sent before profiling (imports, pools, caches, the upstream connection).
WARM_UP = 30
#: Package of a profiled function, from its file (first match wins); ``~`` is a builtin.
GROUPS = (
    ("chatservice", "/chatservice/"),
    ("flask", "/flask/"),
    ("werkzeug", "/werkzeug/"),
    ("urllib3", "/urllib3/"),
    ("prometheus_client", "/prometheus_client/"),
    ("limits", "/flask_limiter/"),
    ("limits", "/limits/"),
    ("logging", "/logging/"),
    ("json", "/json/"),
    ("http", "/http/"),
    ("bench", "/bench/"),
)


def group_of(filename: str) -> str:
    """The package a profiled function belongs to (``builtin`` for C functions)."""
    if filename == "~":
        return "builtin"
    for name, part in GROUPS:
        if part in filename:
            return name
    return "other"


def service_env(upstream_url: str, workdir: Path, route: str = "api") -> dict[str, str]:
    """The benchmark service's settings (bench/scenarios.py's ``Service``), nothing else."""
    empty = workdir / "empty.toml"
    empty.touch()
    return {**bench_settings(upstream_url, str(empty)), "ROUTE": route}


def measure(post: Callable[[], Any], requests: int) -> pstats.Stats:
    """Profile ``requests`` calls of ``post`` after :data:`WARM_UP` unprofiled ones."""
    for _ in range(WARM_UP):
        post()
    # CPU time of this thread: the upstream's answer time (another process) is not ours.
    profile = cProfile.Profile(time.thread_time)
    profile.enable()
    for _ in range(requests):
        post()
    profile.disable()
    return pstats.Stats(profile)


def summary(stats: pstats.Stats, requests: int, top: int) -> dict[str, Any]:
    """Calls and profiled µs per request, calls by package, and our busiest functions."""
    by_group: Counter[str] = Counter()
    ours = []
    every: dict[str, float] = {}
    for (filename, line, name), (_prim, calls, tottime, cumtime, _callers) in (
        stats.stats.items()  # type: ignore[attr-defined]
    ):
        group = group_of(filename)
        by_group[group] += calls
        every[f"{_short(filename)}:{line}({name})"] = round(calls / requests, 2)
        if group == "chatservice":
            where = f"{filename.split('/chatservice/', 1)[1]}:{line}({name})"
            ours.append((tottime, calls, cumtime, where))
    ours.sort(reverse=True)
    return {
        "calls_per_request": round(stats.total_calls / requests, 1),  # type: ignore[attr-defined]
        "profiled_us_per_request": round(1e6 * stats.total_tt / requests, 1),  # type: ignore[attr-defined]
        "calls_by_package": {
            group: round(calls / requests, 1) for group, calls in by_group.most_common()
        },
        "ours_by_tottime": [
            {
                "function": where,
                "calls": round(calls / requests, 2),
                "tottime_us": round(1e6 * tottime / requests, 2),
                "cumtime_us": round(1e6 * cumtime / requests, 2),
            }
            for tottime, calls, cumtime, where in ours[:top]
        ],
        "calls_by_function": dict(sorted(every.items(), key=lambda item: -item[1])),
    }


def _short(filename: str) -> str:
    """A profiled function's file from its package down (``site-packages/`` cut off)."""
    for marker in ("site-packages/", "/lib/python3", str(ROOT) + "/"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename


@contextlib.contextmanager
def fake_upstream(workdir: Path) -> Iterator[str]:
    """bench/upstream.py in its own process; its ``/v1`` base URL."""
    procs = Processes(workdir)
    try:
        proc = procs.start(
            "upstream",
            [sys.executable, str(BENCH / "upstream.py"), "--port", "0"],
            stdout_pipe=True,
        )
        line = read_line(proc, 30, "bench/upstream.py")
        if not line.startswith("READY "):
            raise BenchError(f"bench/upstream.py said {line!r}")
        yield f"http://127.0.0.1:{line.split()[1]}/v1"
    finally:
        procs.stop_all()


def poster(client: Any, path: str, body: dict[str, Any], check: Callable[[Any], bool]):
    """A function that POSTs ``body`` to ``path`` and fails on a wrong answer."""
    data = json.dumps(body)

    def post() -> None:
        answer = client.post(path, data=data, content_type="application/json")
        if answer.status_code != 200 or not check(answer.get_json()):
            raise BenchError(f"{path} answered {answer.status_code}: {answer.data[:300]!r}")

    return post


def cpu_rounds(posts: dict[str, Callable[[], Any]], requests: int, rounds: int) -> dict[str, float]:
    """This thread's CPU µs per request of each path without the profiler: the median of
    ``rounds`` rounds, every path once per round in turn (a slower minute of a shared
    machine then spoils one round of each, not one path)."""
    samples: dict[str, list[float]] = {name: [] for name in posts}
    for _ in range(rounds):
        for name, post in posts.items():
            started = time.thread_time()
            for _ in range(requests):
                post()
            samples[name].append(1e6 * (time.thread_time() - started) / requests)
    return {name: round(statistics.median(values), 1) for name, values in samples.items()}


def run(requests: int, top: int, rounds: int = 0) -> dict[str, Any]:
    """Measure the four paths; the results by name."""
    from chatservice import create_app
    from chatservice.settings import Settings

    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, fake_upstream(Path(tmp)) as upstream:
        openai_body, openai_check = ENDPOINTS[0][2], ENDPOINTS[0][3]
        service = create_app(Settings.from_env(service_env(upstream, Path(tmp)), env_file=None))
        rootless = create_app(
            Settings.from_env(service_env(upstream, Path(tmp), route=""), env_file=None)
        )
        os.environ["NAIVE_UPSTREAM"] = upstream
        import naive_proxy  # bench/naive_proxy.py: reads NAIVE_UPSTREAM on import

        targets = [
            (f"service {path}", service, path, body, check) for _, path, body, check in ENDPOINTS
        ]
        targets.append(
            (
                "service /v1/chat/completions (ROUTE='')",
                rootless,
                "/v1/chat/completions",
                openai_body,
                openai_check,
            )
        )
        targets.append(
            (
                "naive proxy /v1/chat/completions",
                naive_proxy.app,
                "/v1/chat/completions",
                openai_body,
                openai_check,
            )
        )
        posts = {}
        for name, app, path, body, check in targets:
            posts[name] = poster(app.test_client(), path, body, check)
            stats = measure(posts[name], requests)
            results[name] = summary(stats, requests, top)
        if rounds:
            for name, cpu_us in cpu_rounds(posts, requests, rounds).items():
                results[name]["cpu_us_per_request"] = cpu_us
    return results


def report(results: dict[str, Any], top: int) -> str:
    """The results as text: one line per path, packages, then our busiest functions."""
    lines = ["calls/request  profiled µs/request  CPU µs/request  path"]
    for name, result in results.items():
        cpu = result.get("cpu_us_per_request")
        lines.append(
            f"{result['calls_per_request']:13,.0f}  {result['profiled_us_per_request']:19,.0f}"
            f"  {'-' if cpu is None else f'{cpu:,.0f}':>14}  {name}"
        )
    for name, result in results.items():
        lines.append(f"\n{name}: calls per request by package")
        lines.append(
            "  " + ", ".join(f"{g} {c:,.0f}" for g, c in result["calls_by_package"].items())
        )
        if not name.startswith("service"):
            continue
        lines.append(f"  top {top} functions of chatservice by own time (per request):")
        lines.append("  tottime µs  cumtime µs   calls  function")
        for row in result["ours_by_tottime"]:
            lines.append(
                f"  {row['tottime_us']:10.1f}  {row['cumtime_us']:10.1f}  {row['calls']:6.2f}"
                f"  {row['function']}"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=300, help="profiled requests per path")
    parser.add_argument("--top", type=int, default=25, help="functions of ours listed per path")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--cpu-rounds",
        type=int,
        default=0,
        help="also measure CPU µs per request without the profiler, in this many rounds",
    )
    parser.add_argument(
        "--log", default=os.devnull, help="where the service's log lines (stderr) go"
    )
    args = parser.parse_args(argv)
    # The access log writes each line to stderr, as under gunicorn: keep that write (it is
    # part of a request's cost) but send it to --log.
    saved_stderr = os.dup(2)
    with open(args.log, "ab") as log_file:
        os.dup2(log_file.fileno(), 2)
    try:
        results = run(args.requests, args.top, args.cpu_rounds)
    except BenchError as exc:
        os.dup2(saved_stderr, 2)
        print(f"callcount: {exc}", file=sys.stderr)
        return 2
    finally:
        os.dup2(saved_stderr, 2)
    print(report(results, args.top))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
