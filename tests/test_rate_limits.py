"""Per-client-IP limits (HOUR/MINUTE/SECOND_LIMIT) answer 429 in each face's envelope."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.conftest import ROOT

EN = json.loads((ROOT / "i18n" / "en.json").read_text(encoding="utf-8"))


def test_minute_limit_shared_by_both_faces(make_app, fake):
    client = make_app(API_KEY="sk-x", MINUTE_LIMIT="3").test_client()
    assert client.post("/api", json={"user_content": "1"}).status_code == 200
    assert client.post("/api/v1/chat", json={"query": "2"}).status_code == 200
    ok = client.post("/api", json={"user_content": "3"})
    assert ok.status_code == 200
    assert ok.headers["X-RateLimit-Limit"] == "3"
    assert ok.headers["X-RateLimit-Remaining"] == "0"

    api = client.post("/api", json={"user_content": "4"})
    assert api.status_code == 429
    seconds = int(api.headers["Retry-After"])
    assert 0 < seconds <= 60
    body = api.get_json()
    assert body["code"] == 429 and body["msg"] == "failed"
    assert body["data"]["error"] == "rate_limited"
    assert body["data"]["response"] == EN["rate_limited"].format(seconds=seconds)
    assert "X-RateLimit-Reset" in api.headers

    chat = client.post("/api/v1/chat?lang=ru", json={"query": "5"})
    assert chat.status_code == 429
    assert chat.get_json()["data"] == {"error": "rate_limited"}
    assert str(int(chat.headers["Retry-After"])) in chat.get_json()["msg"]
    assert len(fake.received) == 3  # refused requests never reach the upstream


def test_healthz_is_never_limited(make_app):
    client = make_app(SECOND_LIMIT="1").test_client()
    assert all(client.get("/healthz").status_code == 200 for _ in range(5))


def test_limits_off_when_zero_or_empty(make_app, fake):
    client = make_app(API_KEY="sk-x", MINUTE_LIMIT="0", SECOND_LIMIT="").test_client()
    assert all(client.post("/api", json={"user_content": "x"}).status_code == 200 for _ in range(5))


def test_hour_limit(make_app, fake):
    client = make_app(API_KEY="sk-x", HOUR_LIMIT="1").test_client()
    assert client.post("/api", json={"user_content": "x"}).status_code == 200
    r = client.post("/api", json={"user_content": "x"})
    assert r.status_code == 429 and 3000 < int(r.headers["Retry-After"]) <= 3600


def test_clients_are_told_apart_by_ip(make_app, fake):
    client = make_app(API_KEY="sk-x", MINUTE_LIMIT="1").test_client()
    first = {"REMOTE_ADDR": "10.0.0.1"}
    second = {"REMOTE_ADDR": "10.0.0.2"}
    assert client.post("/api", json={"user_content": "x"}, environ_base=first).status_code == 200
    assert client.post("/api", json={"user_content": "x"}, environ_base=second).status_code == 200
    assert client.post("/api", json={"user_content": "x"}, environ_base=first).status_code == 429


@pytest.mark.parametrize(("trusted", "separate"), [("0", False), ("1", True)])
def test_trusted_proxies_decides_whether_x_forwarded_for_counts(make_app, fake, trusted, separate):
    client = make_app(API_KEY="sk-x", MINUTE_LIMIT="1", TRUSTED_PROXIES=trusted).test_client()
    a = client.post("/api", json={"user_content": "x"}, headers={"X-Forwarded-For": "203.0.113.1"})
    b = client.post("/api", json={"user_content": "x"}, headers={"X-Forwarded-For": "203.0.113.2"})
    assert a.status_code == 200
    assert b.status_code == (200 if separate else 429)


def test_second_limit_lets_exactly_two_of_ten_simultaneous_requests_pass(live_server, upstream):
    server = live_server(API_KEY="sk-x", SECOND_LIMIT="2")

    def ask(_: int) -> int:
        return requests.post(
            server.url + "/api", json={"user_content": "x"}, timeout=10
        ).status_code

    with ThreadPoolExecutor(10) as pool:
        statuses = sorted(pool.map(ask, range(10)))
    assert statuses == [200, 200] + [429] * 8


def test_redis_storage_counts_across_servers(live_server, upstream, redis_url):
    env = {"API_KEY": "sk-x", "MINUTE_LIMIT": "3", "SHARED_STATE_URL": redis_url}
    one, two = live_server(**env), live_server(**env)
    statuses = [
        requests.post(server.url + "/api/v1/chat", json={"query": "x"}, timeout=10).status_code
        for server in (one, two, one, two, one)
    ]
    assert statuses == [200, 200, 200, 429, 429]


def test_moving_window_frees_up_after_a_second(make_app, fake):
    client = make_app(API_KEY="sk-x", SECOND_LIMIT="1").test_client()
    assert client.post("/api", json={"user_content": "x"}).status_code == 200
    assert client.post("/api", json={"user_content": "x"}).status_code == 429
    time.sleep(1.1)
    assert client.post("/api", json={"user_content": "x"}).status_code == 200
