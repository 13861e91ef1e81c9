"""Machine instructions per whole (non-streamed) request, counted by valgrind's callgrind.

CPU time on this VM drifts by a third from one quarter of an hour to the next; the number of
instructions a request runs does not. This script runs itself under ``valgrind
--tool=callgrind`` twice per target, sending a few and then many more requests, and prints
the difference divided by the extra requests: the instructions of one request, start-up and
warm-up cancelled out. Each run is gevent-patched as a worker is, and sends the benchmark's
OpenAI body through Flask's test client to the benchmark's fake upstream
(``bench/upstream.py``, its own process, which callgrind does not follow).

Targets: ``service`` (``/api/v1/chat/completions`` with the benchmark's settings), ``naive``
(``bench/naive_proxy.py``, the floor of Flask + urllib3), and the service with one part of it
switched off (``without-<part>``, see :data:`PARTS`): what that part costs per request. A
switched-off part answers nothing different to this body; the switch exists only here.

Needs valgrind (``apt-get install -y valgrind``). About a minute per target.
Run: ``.venv/bin/python bench/instructions.py [service naive without-access-line ...]``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
#: Requests of the short and the long run; warm-up requests come before both.
FEW, MANY, WARM_UP = 40, 240, 30
BODY = {"model": "gpt-3.5-turbo", "messages": [{"role": "user", "content": "ping"}]}


def _observers_without(name: str) -> Any:
    def switch(app: Any) -> None:
        observers = app.extensions["chatservice"].pipeline._observers
        observers[:] = [o for o in observers if type(o).__name__ != name]

    return switch


def _access_line(app: Any) -> None:
    logging.getLogger("chatservice.access").setLevel(logging.WARNING)


def _response_count(app: Any) -> None:
    from chatservice import metrics

    metrics.Metrics.observe_response = lambda self, response: None  # type: ignore[method-assign]


def _key_pool(app: Any) -> None:
    from chatservice.backends import keypool

    keypool.KeyPool.usable = lambda self: list(self._keys)  # type: ignore[method-assign]


def _security_headers(app: Any) -> None:
    from chatservice import http_headers

    http_headers.SecurityHeaders.__call__ = lambda self, environ, start: self.app(environ, start)  # type: ignore[method-assign]


def _request_id(app: Any) -> None:
    from chatservice import access_log

    access_log.request_id_from = lambda value: "0" * 32


#: What ``without-<part>`` switches off, after the app is built.
PARTS = {
    "access-line": _access_line,  # the access line's logging record, format and write
    "access-record": _observers_without("AccessRecord"),  # the access record's observer
    "backend-metrics": _observers_without("BackendMetrics"),  # the backend metrics observer
    "response-count": _response_count,  # the after_request hook counting the response
    "key-pool": _key_pool,  # reading the key pool's marks (the one key is used as is)
    "security-headers": _security_headers,  # the security headers' middleware
    "request-id": _request_id,  # a fixed request id instead of a uuid4
}


def drive(target: str, requests: int) -> None:
    """Inside valgrind: build ``target``'s app and send ``requests`` requests."""
    from gevent import monkey

    monkey.patch_all()
    sys.path[:0] = [str(BENCH), str(ROOT)]
    upstream = subprocess.Popen(
        [sys.executable, str(BENCH / "upstream.py"), "--port", "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{upstream.stdout.readline().split()[1]}/v1"  # type: ignore[union-attr]
        if target == "naive":
            os.environ["NAIVE_UPSTREAM"] = url
            import naive_proxy

            app, path = naive_proxy.app, "/v1/chat/completions"
        else:
            from scenarios import bench_settings

            from chatservice import create_app
            from chatservice.settings import Settings

            empty = Path(tempfile.mkdtemp()) / "empty.toml"
            empty.touch()
            settings = {**bench_settings(url, str(empty)), "ROUTE": "api"}
            app = create_app(Settings.from_env(settings, env_file=None))
            path = "/api/v1/chat/completions"
            if target.startswith("without-"):
                PARTS[target.removeprefix("without-")](app)
        client = app.test_client()
        data = json.dumps(BODY)
        for _ in range(WARM_UP + requests):
            answer = client.post(path, data=data, content_type="application/json")
            if answer.status_code != 200:
                raise SystemExit(f"{path} answered {answer.status_code}")
    finally:
        upstream.terminate()


def instructions(target: str, requests: int) -> int:
    """Instructions callgrind counted in one run of :func:`drive`."""
    run = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--callgrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--drive",
            target,
            str(requests),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts in both runs
        check=True,
    )
    found = re.search(r"Collected : (\d+)", run.stderr)
    if found is None:
        raise SystemExit(f"callgrind said: {run.stderr[-500:]}")
    return int(found[1])


def main(argv: list[str]) -> None:
    if argv[:1] == ["--drive"]:
        drive(argv[1], int(argv[2]))
        return
    targets = argv or ["service", "naive"]
    for target in targets:
        if target not in ("service", "naive") and target.removeprefix("without-") not in PARTS:
            raise SystemExit(f"unknown target {target!r}; parts: {', '.join(PARTS)}")
    for target in targets:
        per_request = (instructions(target, MANY) - instructions(target, FEW)) / (MANY - FEW)
        print(f"{per_request:12,.0f}  {target}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
