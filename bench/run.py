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
    rounds on ``/v1/chat/completions``; the naive proxy's added latency at 1 connection is
    measured in the service's own latency rounds, beside it. The upstream is nginx
    (``return 200 '<json>'``, private prefix and config in a temporary directory) when
    installed, else ``bench/upstream.py``.
``upstreams``
    The same throughput (OpenAI face, 64 connections) with three ``[[upstreams]]`` of equal
    priority and weight, naming the same upstream, against the one-upstream service, in
    interleaved rounds (``--latency-rounds``), both sides back to back in each, alternating
    which goes first: each side's median req/s and worker CPU time per request with their
    spreads, and the medians of the rounds' ratios: throughput >= 95 % and CPU per request
    <= 105 % of the one-upstream figures (the CPU ratio is the one to trust on a busy
    machine).
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
target is missed), ``--keep`` (keep the temporary directory with every process's log),
``--repeat N`` (N whole runs: each metric's median and spread, min to max);
``--help`` lists the rest.

Exit status: 0 when every scenario ran (misses are in the table), 1 with ``--strict`` and a
miss, 2 when a scenario could not run. Everything started is stopped on the way out
(process groups, also on SIGTERM and Ctrl-C).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from procs import BenchError, CpuMeter, raise_open_files, set_autogroup_nice
from report import Scenario, environment, format_value, merge, miss_note, table
from scenarios import (
    Run,
    scenario_idle_memory,
    scenario_model,
    scenario_nonstream,
    scenario_streaming,
    scenario_upstreams,
)

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
VENV = ROOT / ".venv"
DEFAULT_OUT = BENCH / "results"
SCENARIOS = ("idle_memory", "nonstream", "upstreams", "streaming", "model")

log = logging.getLogger("bench")


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
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="whole runs, one after the other; the table gives each metric's median and its "
        "spread (min-max) over the runs",
    )
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
    runs: list[list[Scenario]] = []
    try:
        for index in range(args.repeat):
            if args.repeat > 1:
                log.info("run %d of %d", index + 1, args.repeat)
            # py-spy only in the last run: a profile is for reading, not for the figures.
            runs.append(run_scenarios(run, args, profile=index == args.repeat - 1))
    finally:
        run.procs.stop_all()
        if args.keep:
            log.info("logs kept in %s", workdir)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    results = runs[0] if len(runs) == 1 else merge(runs)

    env["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    document = {
        "timestamp": args.stamp,
        "options": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
        },
        "environment": env,
        "scenarios": {scenario.name: scenario.to_json() for scenario in results},
    }
    if len(runs) > 1:
        document["runs"] = [{s.name: s.to_json() for s in scenarios} for scenarios in runs]
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


def run_scenarios(run: Run, args: argparse.Namespace, profile: bool) -> list[Scenario]:
    """One whole run: each chosen scenario in turn (a profiled rerun on a miss when
    ``profile`` and ``--profile``); every process stopped after each."""
    results: list[Scenario] = []
    functions = {
        "idle_memory": scenario_idle_memory,
        "nonstream": scenario_nonstream,
        "upstreams": scenario_upstreams,
        "streaming": scenario_streaming,
        "model": scenario_model,
    }
    for name in SCENARIOS:
        if name not in args.only:
            continue
        scenario = Scenario(name)
        results.append(scenario)
        meter: CpuMeter | None = None
        log.info("scenario %s: starting (load average %s)", name, scenario.details["loadavg_start"])
        try:
            if args.wait_quiet > 0:
                scenario.details.update(wait_quiet(args.wait_quiet))
            meter = CpuMeter({"harness": os.getpid()}, reaped_children=True)
            functions[name](run, scenario)
            if name == "streaming" and scenario.missed and args.profile and profile:
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
    return results


if __name__ == "__main__":
    sys.exit(main())
