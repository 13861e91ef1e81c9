"""The benchmark's results: each scenario's measured rows against their targets, the machine
they were measured on, and the Markdown table printed at the end (bench/run.py)."""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

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
    "cpu_per_chunk_us": ("<=", 30.0),
    "idle_rss_mb": ("<=", 60.0),
    "tokens_ratio_pct": (">=", 95.0),
    "upstreams_ratio_pct": (">=", 95.0),
    "upstreams_cpu_pct": ("<=", 105.0),
}


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


class Scenario:
    """The measured rows and details of one scenario."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rows: list[dict[str, Any]] = []
        self.details: dict[str, Any] = {"loadavg_start": [round(v, 2) for v in os.getloadavg()]}
        self.error: str | None = None

    def metric(
        self,
        label: str,
        key: str | None,
        value: float,
        unit: str,
        target: float | None = None,
        after: str | None = None,
    ) -> dict[str, Any]:
        """Record a measured value; ``key`` names its target in :data:`TARGETS` (or None),
        ``target`` replaces that entry's number (a target that depends on the options).
        The row goes at the end, or right after the row labelled ``after`` (context for a
        row measured earlier) when there is one."""
        row: dict[str, Any] = {"metric": label, "value": value, "unit": unit}
        if key is not None:
            op, default = TARGETS[key]
            target = default if target is None else target
            row["target"] = f"{op} {target:g}"
            row["target_value"] = target
            row["pass"] = value >= target if op == ">=" else value <= target
        labels = [r["metric"] for r in self.rows]
        self.rows.insert(labels.index(after) + 1 if after in labels else len(labels), row)
        return row

    @property
    def missed(self) -> list[dict[str, Any]]:
        """Rows whose target was missed."""
        return [row for row in self.rows if row.get("pass") is False]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"metrics": self.rows, "details": self.details, "error": self.error}


def merge(runs: list[list[Scenario]]) -> list[Scenario]:
    """Whole runs of the same scenarios (``--repeat``) as one result: each metric's median
    over the runs that measured it, with its ``spread`` (min, max) and every run's
    ``values``; its target judged on the median. Details and errors are the last run's
    (every run is kept whole in the JSON file)."""
    merged: list[Scenario] = []
    for scenarios in zip(*runs, strict=True):
        last = scenarios[-1]
        out = Scenario(last.name)
        out.details = dict(last.details)
        out.error = "; ".join(s.error for s in scenarios if s.error) or None
        labels: list[str] = []
        for scenario in scenarios:
            labels += [row["metric"] for row in scenario.rows if row["metric"] not in labels]
        for label in labels:
            rows = [row for s in scenarios for row in s.rows if row["metric"] == label]
            values = [row["value"] for row in rows]
            value = statistics.median(values)
            row = dict(rows[-1], value=value, spread=[min(values), max(values)], values=values)
            if "target_value" in row:
                target = row["target_value"]
                row["pass"] = value >= target if row["target"].startswith(">=") else value <= target
            out.rows.append(row)
        merged.append(out)
    return merged


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


def format_value(value: float) -> str:
    """A number for the table: integers as such, otherwise 2 or 3 significant decimals."""
    if isinstance(value, int) or float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def table(results: list[Scenario]) -> str:
    """The results as a Markdown table (it goes in the README as is); a metric measured in
    several runs shows its median and, in brackets, its spread (min–max)."""
    lines = [
        "| scenario | metric | measured | target | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for scenario in results:
        if scenario.error:
            lines.append(f"| {scenario.name} | (could not run) | {scenario.error[:80]} | | error |")
        for row in scenario.rows:
            measured = f"{format_value(row['value'])} {row['unit']}".strip()
            if "spread" in row and len(row["values"]) > 1:
                low, high = (format_value(v) for v in row["spread"])
                measured += f" ({low}–{high})"
            outcome = "" if "pass" not in row else ("pass" if row["pass"] else "**miss**")
            target = row.get("target", "")
            if target:
                target = f"{target} {row['unit']}".strip()
            lines.append(
                f"| {scenario.name} | {row['metric']} | {measured} | {target} | {outcome} |"
            )
    return "\n".join(lines)
