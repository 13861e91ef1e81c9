"""Smoke tests of the benchmark harness (bench/run.py): it runs and it cleans up.

Speed targets live in the benchmark itself, never here: these tests only prove that one
cheap scenario runs end to end on 127.0.0.1 and that every process the harness started is
gone afterwards, also when the harness is stopped with SIGTERM halfway through.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.procs import descendants

ROOT = Path(__file__).resolve().parent.parent


def alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_quick_idle_memory_runs_and_writes_results(tmp_path):
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--only", "idle_memory"]
        + ["--out", str(tmp_path), "--no-profile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| idle_memory | worker RSS, idle after warm-up |" in done.stdout

    latest = json.loads((tmp_path / "latest.json").read_text())
    stamped = [p for p in tmp_path.glob("*.json") if p.name != "latest.json"]
    assert len(stamped) == 1
    assert json.loads(stamped[0].read_text()) == latest
    scenario = latest["scenarios"]["idle_memory"]
    assert scenario["error"] is None
    row = scenario["metrics"][0]
    # A real reading of a live worker: tens of MB, and a verdict against the 60 MB target.
    assert 5 < row["value"] < 2000
    assert row["target"] == "<= 60" and isinstance(row["pass"], bool)
    assert scenario["details"]["model_loaded"] is False
    assert len(latest["environment"]["loadavg_start"]) == 3
    # The service (gunicorn master and worker) was stopped on the way out.
    for pid in (scenario["details"]["service_pid"], scenario["details"]["worker_pid"]):
        assert not alive(pid)


def test_sigterm_stops_everything_the_harness_started(tmp_path):
    harness = subprocess.Popen(
        [sys.executable, "bench/run.py", "--quick", "--only", "streaming"]
        + ["--out", str(tmp_path), "--no-profile"],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 60
        # Wait until the stream clients run: the service, its worker and the upstream too.
        while time.monotonic() < deadline and harness.poll() is None:
            pids = descendants(harness.pid)
            started.update(pids)
            if any("streamclient.py" in command_line(pid) for pid in pids):
                break
            time.sleep(0.1)
        assert any("app.py" in command_line(pid) for pid in started), "service never started"
        harness.send_signal(signal.SIGTERM)
        _out, err = harness.communicate(timeout=60)
        assert harness.returncode == 143, err.decode(errors="replace")[-3000:]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(alive(pid) for pid in started):
            time.sleep(0.1)
        assert [pid for pid in started if alive(pid)] == []
    finally:
        if harness.poll() is None:
            os.killpg(harness.pid, signal.SIGKILL)
            harness.wait()


def test_repeated_runs_report_each_metrics_median_and_spread():
    from bench.report import Scenario, merge, table

    runs = []
    for rss, lag in ((50.0, 3.0), (70.0, 1.0), (55.0, 2.0)):
        scenario = Scenario("idle_memory")
        scenario.metric("worker RSS", "idle_rss_mb", rss, "MB")
        scenario.metric("lag", None, lag, "ms")
        runs.append([scenario])
    (merged,) = merge(runs)
    rss_row, lag_row = merged.rows
    assert (rss_row["value"], rss_row["spread"], rss_row["values"]) == (
        55.0,
        [50.0, 70.0],
        [50, 70, 55],
    )
    assert rss_row["pass"] is True  # judged on the median, though one run missed 60 MB
    assert lag_row["value"] == 2.0 and "pass" not in lag_row
    assert "| idle_memory | worker RSS | 55 MB (50–70) | <= 60 MB | pass |" in table([merged])


def test_a_context_row_goes_right_after_the_row_it_explains():
    from bench.report import Scenario, merge, table

    runs = []
    for rps, ceiling in ((1100.0, 1800.0), (1200.0, 1300.0)):
        scenario = Scenario("nonstream")
        scenario.metric("/api/v1/chat/completions: throughput", "throughput_rps", rps, "req/s")
        scenario.metric("/api/v1/chat/completions: added latency p50", None, 0.8, "ms")
        scenario.metric("peers: service req/s", None, rps, "req/s")
        scenario.metric(
            "naive proxy: throughput",
            None,
            ceiling,
            "req/s",
            after="/api/v1/chat/completions: throughput",
        )
        scenario.metric("no such row to follow", None, 1.0, "", after="missing")
        runs.append([scenario])
    labels = [row["metric"] for row in runs[0][0].rows]
    assert labels == [
        "/api/v1/chat/completions: throughput",
        "naive proxy: throughput",
        "/api/v1/chat/completions: added latency p50",
        "peers: service req/s",
        "no such row to follow",
    ]
    (merged,) = merge(runs)
    assert [row["metric"] for row in merged.rows] == labels
    lines = table([merged]).splitlines()
    assert lines[3] == "| nonstream | naive proxy: throughput | 1,550 req/s (1,300–1,800) |  |  |"


def test_cpu_meter_splits_a_process_tree_into_user_and_system_time():
    from bench.procs import CpuMeter, cpu_seconds, cpu_times

    # A child that spends CPU in user space (a loop) and in the kernel (reads of /proc).
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os\nwhile True:\n    sum(range(2000))\n    os.stat('/proc/self/stat')\n",
        ]
    )
    try:
        meter = CpuMeter({"worker": child.pid}, split=("worker",))
        deadline = time.monotonic() + 60
        start = cpu_seconds(child.pid)
        while cpu_seconds(child.pid) - start < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
        cores = meter.stop()
        user, system = cpu_times(child.pid)
    finally:
        child.kill()
        child.wait()
    assert user > 0 and cpu_seconds(child.pid) == 0.0  # gone: no times
    assert cores["worker"] > 0
    # The two parts add up to the whole (each rounded to 0.001 cores).
    assert abs(cores["worker_user"] + cores["worker_system"] - cores["worker"]) <= 0.003
    assert cores["worker_user"] > 0
    assert 0 <= cores["machine_softirq"] <= cores["machine"] + 0.01


def _instructions(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "bench/instructions.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_instruction_counts_driver_answers_on_every_target():
    # What bench/instructions.py runs under valgrind, run bare: every target (a part switched
    # off included) answers the benchmark's body with 200, or the driver exits non-zero.
    from bench.instructions import PARTS

    for target in ("service", "naive", *(f"without-{part}" for part in PARTS)):
        done = _instructions("--drive", target, "2")
        assert done.returncode == 0, (target, done.stderr[-2000:])
    refused = _instructions("without-everything")
    assert refused.returncode != 0 and "unknown target 'without-everything'" in refused.stderr
