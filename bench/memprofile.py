"""Where an idle worker's memory goes: the idle-memory scenario's profile, in its own process.

Builds the app step by step the way a gunicorn gevent worker does (gevent's monkey-patch,
gunicorn's gevent worker, ``app.py``, the libraries the service imports, then
``create_app`` with the settings the environment gives) and prints one JSON document: the
resident memory (VmRSS, KiB) each step added, in order, so each library's figure includes
whatever of its own dependencies was not loaded yet; the number of modules loaded per
top-level package; and the total. RSS, not ``tracemalloc``: shared libraries and the
interpreter's own allocations count as they do in the worker.
"""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: Imported in this order after gevent, gunicorn and app.py; then chatservice, create_app.
LIBRARIES = (
    "flask",
    "requests",
    "redis",
    "limits",
    "flask_limiter",
    "prometheus_client",
    "flask_sock",
    "dotenv",
)


def rss_kib() -> int:
    """This process's VmRSS (KiB)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def main() -> int:
    """Import step by step and print the RSS each step added."""
    steps: list[list[object]] = []
    last = rss_kib()

    def step(label: str) -> None:
        nonlocal last
        now = rss_kib()
        steps.append([label, now - last])
        last = now

    start = last
    from gevent import monkey

    monkey.patch_all()
    step("gevent + monkey-patch")
    sys.path.insert(0, str(ROOT))
    importlib.import_module("gunicorn.workers.ggevent")
    step("gunicorn gevent worker")
    importlib.import_module("app")
    step("app.py (config, settings, logs)")
    for name in LIBRARIES:
        try:
            importlib.import_module(name)
        except ImportError:
            continue
        step(name)
    from chatservice import create_app

    step("chatservice modules")
    create_app()
    step("create_app()")
    packages: Counter[str] = Counter(name.split(".", 1)[0] for name in sys.modules)
    document = {
        "interpreter_kib": start,
        "steps_kib": steps,
        "total_kib": rss_kib(),
        "modules": len(sys.modules),
        "top_modules": packages.most_common(12),
    }
    sys.stdout.write(json.dumps(document) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
