"""Client API keys through real servers: gunicorn with gevent workers, a SQLite file or a
real redis-server as STORE_URL, the ``python3 app.py keys`` command, and the fake upstream.

The budget race is exact: every request's worst case (5 prompt tokens as the service counts
them, plus ``max_tokens`` 5) equals what the fake upstream reports, so a budget of ten
requests admits exactly ten of fifty concurrent ones, whichever instance answers them.
"""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from tests.conftest import ROOT, SETTING_NAMES
from tests.fakeupstream import Reply

ADMIN = "admin-token-live-keys-7"  # noqa: S105 - a test credential
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
UPSTREAM_KEY = "sk-test-live-keys-0001"
PROMPT = "abcdefghijklmno"  # 15 bytes: 5 tokens by the approximation (3 bytes a token)
ANSWER = "one two three four five"  # 5 completion tokens as the fake upstream counts them
WORST = 10
ENV = {
    "AUTH_MODE": "keys",
    "ADMIN_TOKEN": ADMIN,
    "API_KEY": UPSTREAM_KEY,
    "BACKEND": "openai",
    "LOG_PROMPTS": "0",
}


class Seen:
    """Every response body the test got, to look for secrets in afterwards."""

    def __init__(self) -> None:
        self.bodies: list[str] = []

    def __call__(self, response: requests.Response) -> requests.Response:
        self.bodies.append(response.text + json.dumps(dict(response.headers)))
        return response


def create_key(server: Any, **fields: Any) -> dict[str, Any]:
    r = requests.post(
        server.url + "/api/admin/client-keys", json=fields, headers=ADMIN_HEADERS, timeout=10
    )
    assert r.status_code == 201, r.text
    return r.json()


def complete(server: Any, key: str, seen: Seen | None = None) -> requests.Response:
    r = requests.post(
        server.url + "/api/v1/completions",
        json={"model": "gpt-4o", "prompt": PROMPT, "max_tokens": 5},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return seen(r) if seen else r


def race(servers: list[Any], key: str, seen: Seen, count: int = 50) -> list[requests.Response]:
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(complete, servers[i % len(servers)], key) for i in range(count)]
        return [seen(f.result()) for f in futures]


def admin_get(server: Any, path: str, seen: Seen | None = None) -> Any:
    r = requests.get(server.url + "/api/admin/" + path, headers=ADMIN_HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return (seen(r) if seen else r).json()


def test_fifty_concurrent_requests_never_spend_more_than_the_budget(live_server, upstream):
    server = live_server(WORKERS="2", **ENV)
    upstream.default = Reply(text=ANSWER, delay=0.2)  # every call in flight together
    created = create_key(server, name="race", budget_tokens=10 * WORST)
    seen = Seen()
    answers = race([server], created["key"], seen)
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 10 + [429] * 40
    refused = [r.json()["error"]["code"] for r in answers if r.status_code == 429]
    assert set(refused) == {"budget_exhausted"}
    assert len(upstream.received) == 10
    key = admin_get(server, "client-keys/race")
    assert key["spent"]["total"] == 10 * WORST
    row = admin_get(server, "usage?key=race")["rows"][0]
    assert (row["requests"], row["prompt_tokens"], row["completion_tokens"]) == (10, 50, 50)


def test_two_instances_on_one_redis_share_keys_limits_budgets_usage_and_revocations(
    live_server, upstream, redis_url
):
    env = {**ENV, "STORE_URL": redis_url}
    first, second = live_server(**env), live_server(**env)
    upstream.default = Reply(text=ANSWER, delay=0.2)
    seen = Seen()
    budget = create_key(first, name="shared-budget", budget_tokens=10 * WORST)
    answers = race([first, second], budget["key"], seen)
    assert sorted(r.status_code for r in answers) == [200] * 10 + [429] * 40
    assert len(upstream.received) == 10

    upstream.default = Reply(text=ANSWER)
    limited = create_key(second, name="shared-rpm", rpm=3)
    codes = [complete(server, limited["key"], seen).status_code for server in (first, second) * 2]
    assert codes == [200, 200, 200, 429]

    # Usage written by both instances, read from either.
    for server in (first, second):
        rows = admin_get(server, "usage?key=shared-budget", seen)["rows"]
        assert sum(row["requests"] for row in rows) == 10
        rows = admin_get(server, "usage?key=shared-rpm", seen)["rows"]
        assert sum(row["requests"] for row in rows) == 3

    # Disabled on one instance: refused by the other on its very next request.
    revoked = create_key(first, name="revoked")
    assert complete(second, revoked["key"], seen).status_code == 200
    r = requests.patch(
        first.url + "/api/admin/client-keys/revoked",
        json={"enabled": False},
        headers=ADMIN_HEADERS,
        timeout=10,
    )
    assert r.status_code == 200
    r = complete(second, revoked["key"], seen)
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_key_disabled"
    requests.delete(first.url + "/api/admin/client-keys/revoked", headers=ADMIN_HEADERS, timeout=10)
    r = complete(second, revoked["key"], seen)
    assert r.status_code == 401 and r.json()["error"]["code"] == "auth_failed"

    # Redis holds hashes, never a key.
    import redis

    store = redis.Redis.from_url(redis_url)
    dump = b"".join(
        (k + b"=" + (store.dump(k) or b"")) for k in store.scan_iter(b"chatservice:ck:*")
    )
    for created in (budget, limited, revoked):
        assert created["key"].encode() not in dump
    assert_no_secret(
        [first, second], seen, [budget["key"], limited["key"], revoked["key"], UPSTREAM_KEY]
    )


def assert_no_secret(servers: list[Any], seen: Seen, keys: list[str]) -> None:
    logs = "".join(server.log_text() for server in servers)
    assert "client key created" in logs  # the logs are there, and they are checked
    for secret in [*keys, ADMIN]:
        assert secret not in logs
        assert secret[4:] not in logs
        for body in seen.bodies:
            assert secret not in body


def test_a_stream_cut_off_by_the_client_is_still_counted(live_server, upstream):
    server = live_server(**ENV)
    created = create_key(server, name="cut", budget_tokens=100_000)
    words = " ".join(f"w{i}" for i in range(200))
    upstream.default = Reply(text=words, chunk_delay=0.05)
    response = requests.post(
        server.url + "/api/v1/chat/completions",
        json={
            "model": "gpt-4o",
            "stream": True,
            "max_tokens": 1000,
            "messages": [{"role": "user", "content": "count"}],
        },
        headers={"Authorization": f"Bearer {created['key']}"},
        stream=True,
        timeout=30,
    )
    assert response.status_code == 200
    text = ""
    for line in response.iter_lines():
        if line.startswith(b"data: {"):
            delta = json.loads(line[6:])["choices"][0]["delta"]
            text += delta.get("content") or ""
        if len(text) > 40:
            break
    response.close()
    record = upstream.wait_for(1)[0]

    def row() -> dict[str, Any] | None:
        rows = admin_get(server, "usage?key=cut")["rows"]
        return rows[0] if rows else None

    deadline = time.monotonic() + 15
    while row() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    counted = row()
    assert counted is not None, "the cut-off stream was never settled"
    assert counted["requests"] == 1 and counted["errors"] == 0
    # At least what the client got, far less than the whole answer, and the reservation of
    # prompt + 1000 released.
    assert -(-len(text) // 4) <= counted["completion_tokens"] < len(words) // 4
    spent = admin_get(server, "client-keys/cut")["spent"]["total"]
    assert spent == counted["prompt_tokens"] + counted["completion_tokens"] < 1000
    deadline = time.monotonic() + 10
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert record.client_gone or record.finished is not None


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    import os

    base = {k: v for k, v in os.environ.items() if k not in SETTING_NAMES}
    return subprocess.run(
        [sys.executable, "app.py", "keys", *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_key_lifecycle_through_the_cli(live_server, upstream, tmp_path):
    store = {"STORE_URL": f"sqlite:///{tmp_path}/store.db"}  # the live server's own store
    server = live_server(**ENV)
    made = run_cli(
        store,
        "create",
        "--name",
        "ci-bot",
        "--models",
        "gpt-4o*",
        "--rpm",
        "60",
        "--budget-tokens",
        "1000000",
    )
    assert made.returncode == 0, made.stderr
    key, shown = made.stdout.splitlines()
    assert key.startswith("csk-") and json.loads(shown)["budget_tokens"] == 1_000_000
    assert complete(server, key).status_code == 200

    listed = run_cli(store, "list")
    assert listed.returncode == 0 and key not in listed.stdout
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["name"] == "ci-bot" and row["rpm"] == 60 and row["spent"]["total"] > 0

    assert run_cli(store, "disable", "ci-bot").returncode == 0
    r = complete(server, key)
    assert r.status_code == 401 and r.json()["error"]["code"] == "client_key_disabled"
    assert run_cli(store, "enable", "ci-bot").returncode == 0
    assert complete(server, key).status_code == 200
    updated = run_cli(store, "update", "ci-bot", "--models", "gpt-3.5*")
    assert updated.returncode == 0 and json.loads(updated.stdout)["models"] == ["gpt-3.5*"]
    assert complete(server, key).status_code == 403
    assert run_cli(store, "delete", "ci-bot").returncode == 0
    assert complete(server, key).status_code == 401

    missing = run_cli(store, "delete", "ci-bot")
    assert missing.returncode == 1 and "no client key" in missing.stderr
    bad = run_cli(store, "create", "--name", "x", "--rpm", "-3")
    assert bad.returncode == 1 and "rpm" in bad.stderr
    assert key not in server.log_text()


def test_the_websocket_face_applies_the_keys_models_and_budget(live_server, upstream):
    import simple_websocket

    server = live_server(**ENV)
    created = create_key(server, name="ws-bot", models=["gpt-4o"], budget_tokens=60)
    url = f"ws://127.0.0.1:{server.port}/api/ws"
    with pytest.raises(simple_websocket.ConnectionError):
        simple_websocket.Client.connect(url)  # no key: the handshake is refused
    ws = simple_websocket.Client.connect(url, headers={"token": created["key"]})
    try:
        upstream.default = Reply(text="fine thanks")

        def frames(seq: str, **data: Any) -> list[dict[str, Any]]:
            ws.send(json.dumps({"seq": seq, "data": data}))
            got = [json.loads(ws.receive(timeout=10))]
            while got[-1]["data"]["finish_reason"] is None:
                got.append(json.loads(ws.receive(timeout=10)))
            return got

        refused = frames("1", query="hi", model="gpt-4")
        assert refused[-1]["code"] == 403
        assert refused[-1]["data"]["error"] == "model_not_allowed_for_key"
        answered = frames("2", query="hi", model="gpt-4o", max_tokens=20)
        assert "".join(f["data"]["contents"] for f in answered) == "fine thanks"
        spent = frames("3", query="hi", model="gpt-4o", max_tokens=60)
        assert spent[-1]["code"] == 429 and spent[-1]["data"]["error"] == "budget_exhausted"
    finally:
        ws.close()
    rows = admin_get(server, "usage?key=ws-bot")["rows"]
    assert [(r["model"], r["requests"]) for r in rows] == [("gpt-4o", 1)]
