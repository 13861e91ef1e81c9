"""Configuration reload on SIGHUP with a real ``python3 app.py`` process.

The server runs in a folder of its own whose ``.env`` holds its settings; the test rewrites
that file and sends SIGHUP, as an operator would. A stream started before the signal must
finish on the old worker while new workers answer with the new key and limit; a broken file
must change nothing.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from bench.procs import children
from tests.conftest import ROOT, LiveServer
from tests.fakeupstream import FakeUpstream, Reply

OLD_KEY = "sk-old-key-0001aaaa"
NEW_KEY = "sk-new-key-0002bbbb"


class EnvFileServer(LiveServer):
    """``python3 <repo>/app.py`` started in ``folder``: its ``.env`` is that folder's."""

    def __init__(self, folder: Path, settings: dict[str, str]) -> None:
        self.folder = folder
        self.write_env(settings)
        super().__init__({}, folder / "server.log", (str(ROOT / "app.py"),), cwd=folder)

    def write_env(self, settings: dict[str, str]) -> None:
        text = "".join(f"{k}={v}\n" for k, v in settings.items())
        (self.folder / ".env").write_text(text)

    def hang_up(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def wait_for_log(self, text: str, timeout: float = 15.0) -> None:
        self.wait_for_log_count(text, 1, timeout)

    def wait_for_log_count(self, text: str, count: int, timeout: float = 15.0) -> None:
        """Until ``text`` is in the log ``count`` times (or more)."""
        deadline = time.monotonic() + timeout
        while self.log_text().count(text) < count:
            assert time.monotonic() < deadline, (
                f"{text!r} not logged {count} times: {self.log_text()}"
            )
            time.sleep(0.1)


@pytest.fixture
def env_file_server(tmp_path: Path, upstream: FakeUpstream) -> Iterator[EnvFileServer]:
    folder = tmp_path / "service"
    folder.mkdir()
    upstream.reset()
    server = EnvFileServer(folder, settings(upstream, API_KEY=OLD_KEY, MINUTE_LIMIT="0"))
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def settings(upstream: FakeUpstream, **values: str) -> dict[str, str]:
    """The env file's settings: the fake upstream, memory stores, one trusted proxy (so each
    test client can have its own address through X-Forwarded-For)."""
    return {
        "UPSTREAM_BASE_URL": upstream.url,
        "STORE_URL": "memory://",
        "TRUSTED_PROXIES": "1",
        **values,
    }


def ask(server: EnvFileServer, client_ip: str, request_id: str = "") -> requests.Response:
    headers = {"X-Forwarded-For": client_ip}
    if request_id:
        headers["X-Request-ID"] = request_id
    return requests.post(
        server.url + "/api", json={"user_content": "hi"}, headers=headers, timeout=10
    )


def keys_seen(upstream: FakeUpstream) -> list[str]:
    return [r.headers.get("Authorization", "") for r in list(upstream.received)]


def test_sighup_applies_new_key_and_limit_while_a_stream_finishes(env_file_server, upstream):
    server = env_file_server
    words = [f"w{i}" for i in range(20)]
    upstream.push(Reply(text=" ".join(words), chunk_delay=0.5))  # a 10 s stream
    stream = requests.post(
        server.url + "/api/v1/chat",
        json={"query": "long", "stream": True},
        headers={"X-Forwarded-For": "10.9.9.9"},
        stream=True,
        timeout=30,
    )
    events = (line for line in stream.iter_lines() if line)
    assert json.loads(next(events).removeprefix(b"data: "))["data"]["response"] == "w0"
    stream_call = upstream.wait_for(1)[0]
    assert stream_call.headers["Authorization"] == f"Bearer {OLD_KEY}"
    for _ in range(4):  # no limit yet
        assert ask(server, "10.0.0.1").status_code == 200

    server.write_env(settings(upstream, API_KEY=NEW_KEY, MINUTE_LIMIT="3", LOG_FORMAT="json"))
    server.hang_up()

    # New workers answer with the new key as soon as they serve.
    deadline = time.monotonic() + 20
    probe = 0
    while f"Bearer {NEW_KEY}" not in keys_seen(upstream):
        assert time.monotonic() < deadline, server.log_text()
        probe += 1
        ask(server, f"10.1.0.{probe}")
        time.sleep(0.1)
    assert stream_call.finished is None  # the old worker is still streaming

    # The new limit: a fresh client gets 3 answers a minute, then 429. The old worker may
    # take a second to stop accepting after its SIGTERM, so a round it served is retried.
    rounds = []
    for round_ in range(4):
        ip = f"10.2.0.{round_}"
        rounds.append([ask(server, ip).status_code for _ in range(4)])
        if rounds[-1] == [200, 200, 200, 429]:
            limited_ip = ip
            break
        time.sleep(1)
    assert rounds[-1] == [200, 200, 200, 429], rounds

    # New log settings too: the new worker's access lines are JSON.
    assert ask(server, "10.3.0.1", request_id="after-reload").status_code == 200
    server.wait_for_log('"request_id": "after-reload"')

    # The stream begun before the signal ends normally on its old worker.
    rest = [line.removeprefix(b"data: ") for line in events]
    assert rest[-1] == b"[DONE]"
    text = "".join(json.loads(event)["data"]["response"] for event in rest[:-1])
    assert "w0" + text == " ".join(words)

    # A broken file is refused with one line naming the setting; nothing else changes.
    boots = server.log_text().count("Booting worker")
    workers = set(children(server.proc.pid))
    server.write_env(settings(upstream, API_KEY=OLD_KEY, MINUTE_LIMIT="abc"))
    server.hang_up()
    server.wait_for_log("reload refused")
    # The master handles signals one at a time and forks its workers itself: once it has
    # refused a second SIGHUP, the first one's handling is over and any worker it started
    # would be its child by now.
    server.hang_up()
    server.wait_for_log_count("reload refused", 2)
    # No new worker (the old one that finished its stream may have exited meanwhile).
    assert set(children(server.proc.pid)) <= workers
    log = server.log_text()
    naming = [line for line in log.splitlines() if "MINUTE_LIMIT" in line]
    assert len(naming) == 2 and all("abc" in line for line in naming), naming
    assert log.count("Booting worker") == boots
    # The limit still counts (a restarted worker would have forgotten this client) ...
    assert ask(server, limited_ip).status_code == 429
    # ... and a new client is answered with the key in force, not the refused file's.
    before = len(upstream.received)
    assert ask(server, "10.4.0.1").status_code == 200
    assert keys_seen(upstream)[before:] == [f"Bearer {NEW_KEY}"]
