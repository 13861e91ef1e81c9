"""Several upstreams with real servers: the WebSocket face falling back, two instances
sharing breakers through one redis-server, and a SIGHUP reload changing the list while
requests run.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.fakeupstream import FakeUpstream, Reply
from tests.test_reload import EnvFileServer
from tests.test_ws import answer, ask, connect, contents  # noqa: F401 - connect: a fixture

ADMIN = {"Authorization": "Bearer admin-secret-token"}


@pytest.fixture
def pair() -> Iterator[tuple[FakeUpstream, FakeUpstream]]:
    a, b = FakeUpstream(), FakeUpstream()
    yield a, b
    a.close()
    b.close()


def upstreams(*entries: tuple[str, FakeUpstream, int]) -> str:
    return json.dumps(
        [
            {"name": name, "base_url": fake.url, "priority": priority, "retries": 0}
            | {"models": ["*"]}
            for name, fake, priority in entries
        ]
    )


def test_the_websocket_face_falls_back(live_server, connect, pair):  # noqa: F811
    a, b = pair
    server = live_server(UPSTREAMS=upstreams(("a", a, 1), ("b", b, 0)))
    a.push(Reply(status=503, body={}))
    ws = connect(server)
    ask(ws, "s-1", query="hi", origin_stream=True)
    frames = answer(ws)
    assert all(frame["code"] == 0 for frame in frames)
    assert "".join(contents(frames)) == "echo: hi"
    assert len(a.received) == 1 and len(b.received) == 1


def test_two_instances_share_breakers_through_redis(live_server, redis_url, pair):
    a, b = pair
    env = {
        "UPSTREAMS": upstreams(("a", a, 1), ("b", b, 0)),
        "SHARED_STATE_URL": redis_url,
        "UPSTREAM_BREAKER_FAILURES": "1",
        "UPSTREAM_BREAKER_COOLDOWN": "60",
        "ADMIN_TOKEN": "admin-secret-token",
    }
    one, two = live_server(**env), live_server(**env)
    a.push(Reply(status=502, body={}))
    body = {"user_content": "hi"}
    assert requests.post(one.url + "/api", json=body, timeout=10).status_code == 200
    view = requests.get(two.url + "/api/admin/upstreams", headers=ADMIN, timeout=10).json()
    assert {row["name"]: row["breaker"] for row in view["upstreams"]}["a"] == "open"
    for _ in range(3):
        assert requests.post(two.url + "/api", json=body, timeout=10).status_code == 200
    assert len(a.received) == 1 and len(b.received) == 4  # two never tried a


def toml(*entries: tuple[str, FakeUpstream]) -> str:
    return "".join(
        f'[[upstreams]]\nname = "{name}"\nbase_url = "{fake.url}"\nmodels = ["*"]\n\n'
        for name, fake in entries
    )


def test_a_reload_adds_and_removes_upstreams_while_requests_run(tmp_path: Path, pair):
    a, b = pair
    folder = tmp_path / "service"
    folder.mkdir()
    (folder / "config.toml").write_text(toml(("a", a)))
    server = EnvFileServer(folder, {"STORE_URL": "memory://", "WORKERS": "2"})
    statuses: list[int | str] = []
    stop = threading.Event()

    def load() -> None:
        # A new connection each time, as in test_reload: an idle keep-alive connection to a
        # worker being replaced is gunicorn's business, not the router's.
        while not stop.is_set():
            try:
                r = requests.post(server.url + "/api", json={"user_content": "hi"}, timeout=30)
                statuses.append(r.status_code)
            except requests.RequestException as exc:
                statuses.append(type(exc).__name__)  # type: ignore[arg-type]

    try:
        server.wait_ready()
        runner = threading.Thread(target=load)
        runner.start()
        try:
            a.wait_for(5)
            (folder / "config.toml").write_text(toml(("b", b)))
            server.hang_up()
            b.wait_for(5, timeout=30)
        finally:
            stop.set()
            runner.join(timeout=15)
        assert statuses and set(statuses) == {200}
        # Once the old workers are gone (gunicorn replaces them one by one), a is never asked.
        deadline, streak = time.monotonic() + 30, 0
        while streak < 10:
            assert time.monotonic() < deadline, "a still gets requests after the reload"
            before = len(a.received)
            r = requests.post(server.url + "/api", json={"user_content": "hi"}, timeout=10)
            assert r.status_code == 200
            streak = streak + 1 if len(a.received) == before else 0
        deadline = time.monotonic() + 5
        while "configuration reloaded" not in server.log_text():
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        server.stop()
