"""How fast one worker writes access lines to LOG_DIR, in CPU time, and what it costs in memory.

Runs the entry point's log set-up (``chatservice.logs.apply_settings`` with LOG_DIR, JSON
lines, as ``python3 app.py``'s master does), forks one child as gunicorn forks a worker, and
has it log access records (a typical line's fields) in a tight loop, stderr silenced. Prints one
JSON object: ``lines``, ``worker_cpu_s`` (the child's user+system CPU for the loop),
``lines_per_cpu_s``, ``master_cpu_s`` (the parent's CPU from the fork until every line is in
the file, its log threads included), ``worker_rss_kib`` and ``worker_private_kib`` (the
child's resident memory after the loop, and the part of it not shared with the master) and
``file_lines`` (lines found in access.log: all of them, or the run is wrong).

``PYTHONPATH=. python3 bench/log_rate.py [LINES]`` measures this checkout; another checkout
on ``PYTHONPATH`` measures that one (to compare designs). 2 cores shared with others make the
numbers noisy: take several runs.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import tempfile
from pathlib import Path


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def main(lines: int) -> dict[str, float]:
    """Measure ``lines`` access records written by one forked worker (see the module)."""
    from chatservice import access_log, logs
    from chatservice.settings import Settings

    log_dir = tempfile.mkdtemp(prefix="chatservice-lograte-")
    settings = Settings.from_env({"LOG_DIR": log_dir, "LOG_FORMAT": "json"})
    logs.apply_settings(settings)
    for handler in logging.getLogger().handlers:  # stderr off: only the file is measured
        if type(handler) is logging.StreamHandler:
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - for the process's life
    read_r, read_w = os.pipe()
    master_start = _cpu(resource.RUSAGE_SELF)
    pid = os.fork()
    if pid == 0:
        os.close(read_r)
        fields = {
            "request_id": "0" * 32,
            "face": "openai_api",
            "route": "/api/v1/chat/completions",
            "method": "POST",
            "status": 200,
            "duration_ms": 12.3,
            "ip": "127.0.0.1",
            "model": "gpt-4o-mini",
            "prompt_tokens": 25,
            "completion_tokens": 120,
            "backend": "upstream",
            "usage": "reported",
        }
        start = _cpu(resource.RUSAGE_SELF)
        for n in range(lines):
            line = {**fields, "request_id": f"{n:032x}"}
            access_log.access_log.info("POST ... 200", extra={"access": line})
        spent = _cpu(resource.RUSAGE_SELF) - start
        rss = int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0])
        rollup = Path("/proc/self/smaps_rollup").read_text()
        private = sum(
            int(rollup.split(f"{kind}:")[1].split()[0])
            for kind in ("Private_Clean", "Private_Dirty")
        )
        os.write(read_w, json.dumps({"cpu": spent, "rss": rss, "private": private}).encode())
        logs.shutdown()
        os._exit(0)
    os.close(read_w)
    child = json.loads(os.read(read_r, 4096))
    os.waitpid(pid, 0)
    logs.shutdown()  # the hub design writes its last lines here
    master = _cpu(resource.RUSAGE_SELF) - master_start
    written = sum(1 for _ in open(os.path.join(log_dir, "access.log"), encoding="utf-8"))
    for name in os.listdir(log_dir):
        os.remove(os.path.join(log_dir, name))
    os.rmdir(log_dir)
    return {
        "lines": lines,
        "worker_cpu_s": round(child["cpu"], 3),
        "lines_per_cpu_s": round(lines / child["cpu"]),
        "master_cpu_s": round(master, 3),
        "worker_rss_kib": child["rss"],
        "worker_private_kib": child["private"],
        "file_lines": written,
    }


if __name__ == "__main__":
    print(json.dumps(main(int(sys.argv[1]) if len(sys.argv) > 1 else 100_000)))
