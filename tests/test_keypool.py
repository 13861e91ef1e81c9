"""The key pool, failover, retries, the global upstream RPM, proxies and the admin view."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from chatservice.backends.keypool import read_key_file
from tests.fakeupstream import FakeUpstream, Reply

A, B, C = "sk-key-aaaaaaaaaaaa", "sk-key-bbbbbbbbbbbb", "sk-key-cccccccccccc"
INVALID = Reply(status=401, body={"error": {"code": "invalid_api_key"}})
QUOTA = Reply(status=429, body={"error": {"code": "insufficient_quota"}})


def auth(record) -> str:
    return record.headers.get("Authorization", "").removeprefix("Bearer ")


class Clock:
    """An injected clock for the shared state (epoch seconds)."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def pool_app(make_app, **env):
    app = make_app(**env)
    clock = Clock()
    app.extensions["chatservice"].shared_state.clock = clock
    return app, app.test_client(), clock


def snapshot(app) -> dict[str, dict]:
    pool = app.extensions["chatservice"].backends.upstream.pool
    return {row["key"]: row for row in pool.snapshot()}


def ask(client, text="hi"):
    return client.post("/api/v1/chat", json={"query": text})


def test_revoked_key_fails_over_and_is_disabled(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.push(INVALID)
    r = ask(client)
    assert r.status_code == 200 and r.get_json()["data"]["response"] == "echo: hi"
    assert [auth(x) for x in fake.received] == [A, B]
    state = snapshot(app)
    assert state["sk-...aaaa"]["state"] == "disabled"
    assert state["sk-...aaaa"]["last_error"] == "invalid_key"
    assert state["sk-...aaaa"]["failures"] == 1
    assert state["sk-...bbbb"]["state"] == "usable"
    # The disabled key is never tried again.
    for _ in range(4):
        assert ask(client).status_code == 200
    assert all(auth(x) == B for x in fake.received[2:])


def test_calls_rotate_round_robin(make_app, fake):
    _, client, _ = pool_app(make_app, API_KEY=f"{A},{B},{C}")
    for _ in range(6):
        ask(client)
    assert [auth(x) for x in fake.received] == [A, B, C, A, B, C]


def test_rate_limited_key_cools_down_for_retry_after_then_returns(make_app, fake):
    app, client, clock = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.push(
        Reply(
            status=429,
            body={"error": {"code": "rate_limit_exceeded"}},
            headers={"Retry-After": "20"},
        )
    )
    assert ask(client).status_code == 200
    assert [auth(x) for x in fake.received] == [A, B]
    assert snapshot(app)["sk-...aaaa"]["state"] == "cooling"
    assert snapshot(app)["sk-...aaaa"]["cooldown_until"] == clock.now + 20
    for _ in range(3):
        ask(client)
    assert all(auth(x) == B for x in fake.received[2:])
    clock.now += 21
    assert snapshot(app)["sk-...aaaa"]["state"] == "usable"
    for _ in range(2):
        ask(client)
    assert {auth(x) for x in fake.received[-2:]} == {A, B}


def test_cool_down_without_retry_after_backs_off_exponentially(make_app, fake):
    app, client, clock = pool_app(make_app, API_KEY=A)
    limited = Reply(status=429, body={"error": {"code": "rate_limit_exceeded"}})
    fake.push(limited)
    r = ask(client)
    # The one key's refusal may be the request's own: the client sees the upstream's 429.
    assert r.status_code == 429 and r.get_json()["data"]["error"] == "upstream_rate_limited"
    assert r.headers["Retry-After"] == "1"
    assert snapshot(app)["sk-...aaaa"]["cooldown_until"] == clock.now + 1
    clock.now += 1.5
    fake.push(limited)
    ask(client)
    assert snapshot(app)["sk-...aaaa"]["cooldown_until"] == clock.now + 2
    clock.now += 2.5
    assert ask(client).status_code == 200  # success resets the backoff
    fake.push(limited)
    ask(client)
    assert snapshot(app)["sk-...aaaa"]["cooldown_until"] == clock.now + 1


def test_insufficient_quota_disables(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.push(QUOTA)
    assert ask(client).status_code == 200
    assert snapshot(app)["sk-...aaaa"]["state"] == "disabled"
    assert snapshot(app)["sk-...aaaa"]["last_error"] == "insufficient_quota"


def wait_for_state(app, masked: str, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while snapshot(app)[masked]["state"] != state:
        assert time.monotonic() < deadline, snapshot(app)[masked]
        time.sleep(0.02)


def test_a_bare_403_suspends_the_key_until_its_models_probe_clears_it(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.push(Reply(status=403, body={"error": {"code": "unsupported_country_region"}}))
    assert ask(client).status_code == 200
    wait_for_state(app, "sk-...aaaa", "usable")  # GET /models with A answered 200
    assert A in fake.probes


def test_a_bare_401_disables_the_key_when_its_models_probe_refuses_it_too(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.probe_refused = {A}
    fake.push(Reply(status=401, body={"error": {"message": "no"}}))
    assert ask(client).status_code == 200
    wait_for_state(app, "sk-...aaaa", "disabled")
    deadline = time.monotonic() + 5
    while A not in fake.probes:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    for _ in range(3):
        assert ask(client).status_code == 200
    assert snapshot(app)["sk-...aaaa"]["state"] == "disabled"
    assert all(auth(x) == B for x in fake.received[2:])


def test_auto_remove_off_keeps_rejected_keys(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}", AUTO_REMOVE_KEYS="false")
    fake.push(INVALID)
    assert ask(client).status_code == 200
    assert snapshot(app)["sk-...aaaa"]["state"] == "usable"
    assert snapshot(app)["sk-...aaaa"]["failures"] == 1


def test_all_keys_dead_gives_503_and_the_service_keeps_answering(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}")
    fake.push(INVALID, QUOTA)
    r = client.post("/api?lang=ru", json={"user_content": "hi"})
    assert r.status_code == 503
    assert r.get_json()["data"]["error"] == "no_upstream_key"
    assert r.get_json()["data"]["response"] == "Сейчас нет доступного ключа вышестоящего API."
    assert "Retry-After" not in r.headers  # nothing will come back by itself
    count = len(fake.received)
    again = ask(client)
    assert again.status_code == 503 and again.get_json()["data"]["error"] == "no_upstream_key"
    assert len(fake.received) == count  # no upstream call without a usable key
    assert client.get("/healthz").status_code == 200


def test_transient_5xx_is_retried_and_never_disables_a_key(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=A)
    fake.push(
        Reply(status=503, body={"error": {"message": "overloaded"}}), Reply(status=502, body={})
    )
    r = ask(client)
    assert r.status_code == 200
    assert len(fake.received) == 3 and all(auth(x) == A for x in fake.received)
    assert snapshot(app)["sk-...aaaa"] | {"id": None} == {
        "key": "sk-...aaaa",
        "id": None,
        "state": "usable",
        "cooldown_until": None,
        "failures": 0,
        "last_error": None,
    }


def test_retries_are_bounded_by_upstream_retries(make_app, fake):
    _, client, _ = pool_app(make_app, API_KEY=A, UPSTREAM_RETRIES="1")
    failing = Reply(status=503, body={})
    fake.push(failing, failing, failing)
    r = ask(client)
    assert r.status_code == 503 and r.get_json()["data"]["error"] == "upstream_overloaded"
    assert len(fake.received) == 2


def test_connection_refused_is_retried_then_502(make_app, fake):
    from tests.conftest import free_port

    _, client, _ = pool_app(
        make_app, API_KEY=A, UPSTREAM_BASE_URL=f"http://127.0.0.1:{free_port()}/v1"
    )
    r = ask(client)
    assert r.status_code == 502 and r.get_json()["data"]["error"] == "upstream_unreachable"


def test_streams_are_never_retried_after_they_started(make_app, fake):
    _, client, _ = pool_app(make_app, API_KEY=A)
    fake.push(Reply(text="a b c d", drop_after=2))
    body = client.post("/api", json={"user_content": "x", "stream": True}).get_data(as_text=True)
    assert "upstream_interrupted" in body
    assert len(fake.received) == 1


def test_key_file_and_api_key_are_combined(make_app, fake, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_bytes(f"# production keys\r\n\r\n  {B}  \r\n{C} # spare\r\n#{A}\r\n{A}".encode())
    assert [k.get_secret_value() for k in read_key_file(str(key_file))] == [B, C, A]
    app, client, _ = pool_app(make_app, API_KEY=A, KEY_FILE=str(key_file))
    assert [
        row["key"] for row in app.extensions["chatservice"].backends.upstream.pool.snapshot()
    ] == ["sk-...aaaa", "sk-...bbbb", "sk-...cccc"]


def test_unreadable_key_file_stops_startup(make_app, tmp_path):
    from chatservice.settings import ConfigError

    with pytest.raises(ConfigError, match="^KEY_FILE: cannot read"):
        make_app(KEY_FILE=str(tmp_path / "missing.txt"))


def test_upstream_rpm_is_a_global_limit(make_app, fake):
    client = make_app(API_KEY=A, UPSTREAM_RPM="2").test_client()
    statuses = []
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):  # different clients, one budget
        r = client.post(
            "/api",
            json={"user_content": "x", "lang": "zh_CN"},
            environ_base={"REMOTE_ADDR": address},
        )
        statuses.append(r.status_code)
    assert statuses == [200, 200, 429]
    assert r.get_json()["data"]["error"] == "server_busy"
    assert r.get_json()["data"]["response"] == "服务器繁忙，请一分钟后重试。"
    assert len(fake.received) == 2


def test_clients_cannot_choose_the_upstream(client, fake, upstream):
    r = client.post(
        "/api",
        json={
            "user_content": "x",
            "base_url": "http://169.254.169.254/",
            "api_base": "http://10.0.0.1/",
            "url": "http://10.0.0.1/",
        },
    )
    assert r.status_code == 200
    assert fake.received[0].path == "/v1/chat/completions"
    assert "base_url" not in fake.received[0].json


@pytest.fixture
def proxy():
    """A second fake upstream acting as the HTTP proxy: it sees absolute-form requests."""
    server = FakeUpstream()
    yield server
    server.close()


@pytest.mark.parametrize("variable", ["CHAT_PROXY", "PROXY", "HTTP_PROXY", "http_proxy"])
def test_proxy_settings_reach_requests(make_app, fake, proxy, variable):
    address = proxy.url.removeprefix("http://").removesuffix("/v1")  # host:port, no scheme
    client = make_app(API_KEY=A, **{variable: address}).test_client()
    r = ask(client)
    assert r.status_code == 200
    assert fake.received == []
    assert proxy.received[0].path == fake.url + "/chat/completions"


def test_no_proxy_bypasses_the_standard_proxy(make_app, fake, proxy):
    client = make_app(API_KEY=A, HTTP_PROXY=proxy.url, NO_PROXY="127.0.0.1,localhost")
    assert ask(client.test_client()).status_code == 200
    assert proxy.received == [] and len(fake.received) == 1


def test_proxy_without_scheme_means_http():
    from tests.conftest import settings_from

    assert settings_from({"CHAT_PROXY": "127.0.0.1:7890"}).proxy == "http://127.0.0.1:7890"


def test_admin_keys_view(make_app, fake):
    app, client, _ = pool_app(make_app, API_KEY=f"{A},{B}", ADMIN_TOKEN="admin-secret-token")
    fake.push(INVALID)
    ask(client)
    assert client.get("/api/admin/keys").status_code == 401
    wrong = client.get("/api/admin/keys", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["WWW-Authenticate"] == "Bearer"
    assert wrong.get_json()["data"]["error"] == "admin_unauthorized"
    r = client.get("/api/admin/keys", headers={"Authorization": "Bearer admin-secret-token"})
    assert r.status_code == 200
    rows = r.get_json()["keys"]
    assert [(row["key"], row["state"], row["failures"], row["last_error"]) for row in rows] == [
        ("sk-...aaaa", "disabled", 1, "invalid_key"),
        ("sk-...bbbb", "usable", 0, None),
    ]
    text = r.get_data(as_text=True)
    assert A not in text and B not in text


def test_admin_view_is_off_without_admin_token(make_app):
    client = make_app(API_KEY=A).test_client()
    r = client.get("/api/admin/keys", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 404


def test_three_keys_one_revoked_no_failed_request_under_concurrency(live_server, upstream):
    server = live_server(API_KEY=f"{A},{B},{C}")
    upstream.revoked = {B}
    upstream.default = Reply(delay=0.05)

    def call(i: int) -> int:
        return requests.post(
            server.url + "/api", json={"user_content": f"q{i}"}, timeout=30
        ).status_code

    with ThreadPoolExecutor(30) as pool:
        statuses = list(pool.map(call, range(30)))
    assert statuses == [200] * 30
    answered = [auth(x) for x in upstream.received if auth(x) != B]
    assert len(answered) == 30 and set(answered) == {A, C}


def test_a_key_disabled_by_one_instance_is_skipped_by_another(live_server, upstream, redis_url):
    env = {"API_KEY": f"{A},{B}", "SHARED_STATE_URL": redis_url}
    one, two = live_server(**env), live_server(**env)
    upstream.push(INVALID)
    assert requests.post(one.url + "/api", json={"user_content": "x"}, timeout=10).ok
    assert [auth(x) for x in upstream.received] == [A, B]
    for _ in range(3):
        assert requests.post(two.url + "/api", json={"user_content": "x"}, timeout=10).ok
    assert [auth(x) for x in upstream.received[2:]] == [B, B, B]


def test_one_refused_request_never_takes_the_keys_out_of_service(live_server, upstream):
    """A request the upstream refuses whatever the key (a model restriction, moderation) gets
    the upstream's 403; at most one key is suspended per request, the /models probe puts it
    back, and innocent requests and /readyz never see a 503.
    """
    server = live_server(API_KEY=f"{A},{B},{C}", ADMIN_TOKEN="admin-token-123456")
    upstream.by_content["forbidden"] = Reply(status=403, body={"error": {"message": "no"}})
    for _ in range(4):
        r = requests.post(server.url + "/api", json={"user_content": "forbidden"}, timeout=10)
        assert r.status_code == 403 and r.json()["data"]["error"] == "upstream_refused"
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 200
        ok = requests.post(server.url + "/api", json={"user_content": "fine"}, timeout=10)
        assert ok.status_code == 200
    refused = [x for x in upstream.received if x.json["messages"][-1]["content"] == "forbidden"]
    assert len(refused) <= 8  # two keys per refused request at most, never all three
    admin = {"Authorization": "Bearer admin-token-123456"}
    deadline = time.monotonic() + 10
    while True:
        keys = requests.get(server.url + "/api/admin/keys", headers=admin, timeout=10).json()
        if all(row["state"] == "usable" for row in keys["keys"]):
            break
        assert time.monotonic() < deadline, keys
        time.sleep(0.05)


def test_a_request_drawing_plain_429s_cools_one_key_and_gets_the_429(live_server, upstream):
    server = live_server(API_KEY=f"{A},{B},{C}", ADMIN_TOKEN="admin-token-123456")
    upstream.by_content["heavy"] = Reply(
        status=429, body={"error": {"code": "rate_limit_exceeded"}}
    )
    r = requests.post(server.url + "/api", json={"user_content": "heavy"}, timeout=10)
    assert r.status_code == 429 and r.json()["data"]["error"] == "upstream_rate_limited"
    admin = {"Authorization": "Bearer admin-token-123456"}
    keys = requests.get(server.url + "/api/admin/keys", headers=admin, timeout=10).json()["keys"]
    assert sorted(row["state"] for row in keys) == ["cooling", "usable", "usable"]
    for i in range(4):
        ok = requests.post(server.url + "/api", json={"user_content": f"q{i}"}, timeout=10)
        assert ok.status_code == 200
