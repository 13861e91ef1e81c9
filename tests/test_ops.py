"""Operations: /readyz, /metrics, security headers and CORS."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Response
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from chatservice import http_headers
from chatservice.backends.keypool import key_id
from chatservice.settings import Secret
from tests.conftest import free_port
from tests.fakeupstream import Reply

KEY = "sk-ops-configured-0001"
KEY_A = "sk-ops-key-aaaa-0001"
KEY_B = "sk-ops-key-bbbb-0002"
ORIGIN = "https://app.example"
SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, by (name, labels)."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.get_data(as_text=True))


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; a labelled counter never incremented is absent, i.e. 0."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def ask(client, text: str = "hi", **extra):
    return client.post("/api", json={"user_content": text, **extra})


def key_file(tmp_path: Path, *keys: str) -> str:
    path = tmp_path / "keys.txt"
    path.write_text("\n".join(keys) + "\n")
    return str(path)


# --- /readyz ------------------------------------------------------------------------------


def test_readyz_is_ready_with_a_usable_key(make_app):
    response = make_app(API_KEY=KEY).test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ready",
        "checks": {"store": "ok", "shared_state": "ok", "backend": "ok"},
    }


def test_readyz_is_ready_for_a_keyless_openai_upstream(make_app):
    response = make_app(BACKEND="openai").test_client().get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_readyz_is_not_ready_once_the_only_key_is_disabled(make_app, fake, tmp_path):
    client = make_app(KEY_FILE=key_file(tmp_path, KEY)).test_client()
    assert client.get("/readyz").status_code == 200
    fake.revoked = {KEY}
    assert ask(client).status_code == 503  # the upstream's 401 disabled the key
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "not_ready"
    assert body["checks"]["backend"] == "no_usable_key"
    assert body["failing"] == ["backend"]
    assert KEY not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("env_name", "check"),
    [("STORE_URL", "store"), ("SHARED_STATE_URL", "shared_state")],
)
def test_readyz_names_an_unreachable_redis(make_app, env_name, check):
    closed = free_port()  # nothing listens there
    url = f"redis://:pw-not-for-clients@127.0.0.1:{closed}/0"
    response = make_app(API_KEY=KEY, **{env_name: url}).test_client().get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"][check] == "unavailable"
    assert body["failing"] == [check]
    text = response.get_data(as_text=True)
    assert "pw-not-for-clients" not in text and str(closed) not in text
    assert "Traceback" not in text


def test_readyz_checks_the_embedded_model_file_without_loading_it(make_app, tmp_path):
    missing = make_app(BACKEND="local", LOCAL_MODEL_PATH=str(tmp_path / "absent.gguf"))
    response = missing.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["backend"] == "model_missing"
    assert str(tmp_path) not in response.get_data(as_text=True)
    # An empty file is no model: loading it would fail, so ready here proves nothing loaded.
    empty = tmp_path / "empty.gguf"
    empty.write_bytes(b"")
    present = make_app(BACKEND="local", LOCAL_MODEL_PATH=str(empty))
    assert present.test_client().get("/readyz").status_code == 200
    # With no key, the default BACKEND=auto answers from the embedded model too.
    auto = make_app(LOCAL_MODEL_PATH=str(tmp_path / "absent.gguf"))
    assert auto.test_client().get("/readyz").get_json()["failing"] == ["backend"]


def test_ops_endpoints_skip_rate_limits_and_auth(make_app, fake):
    app = make_app(API_KEY=KEY, SECOND_LIMIT="1", AUTH_MODE="simple", AUTH_TOKEN="tok-ops")
    client = app.test_client()
    for _ in range(10):
        for path in ("/readyz", "/healthz", "/metrics"):  # no token: outside AUTH_MODE
            assert client.get(path).status_code == 200, path
    # None of them spent the chat budget: the first chat request passes, the next does not.
    assert ask_with_token(client, "tok-ops").status_code == 200
    assert ask_with_token(client, "tok-ops").status_code == 429


def ask_with_token(client, token: str):
    return client.post("/api", json={"user_content": "hi"}, headers={"token": token})


# --- /metrics -------------------------------------------------------------------------------


def test_metrics_count_requests_latency_errors_and_tokens(make_app, fake):
    client = make_app(API_KEY=KEY).test_client()
    usages = [ask(client).get_json()["data"]["usage"] for _ in range(2)]
    openai = client.post(
        "/api/v1/chat/completions", json={"messages": [{"role": "user", "content": "a b"}]}
    )
    usages.append(openai.get_json()["usage"])
    fake.push(Reply(status=500, body={"error": {"message": "boom"}}))
    assert ask(client).status_code == 502
    assert client.get("/api/no/such/path").status_code == 404

    samples = scrape(client)
    requests_total = "chatservice_requests_total"
    assert value(samples, requests_total, face="api", route="/api", status="200") == 2
    assert value(samples, requests_total, face="api", route="/api", status="502") == 1
    assert (
        value(
            samples,
            requests_total,
            face="openai_api",
            route="/api/v1/chat/completions",
            status="200",
        )
        == 1
    )
    assert value(samples, requests_total, face="none", route="<unmatched>", status="404") == 1
    count = "chatservice_request_duration_seconds_count"
    assert value(samples, count, face="api", route="/api") == 3
    assert value(samples, "chatservice_backend_duration_seconds_count", backend="upstream") == 4
    errors = "chatservice_backend_errors_total"
    assert value(samples, errors, backend="upstream", type="upstream_error") == 1
    tokens = "chatservice_tokens_total"
    prompt = sum(usage["prompt_tokens"] for usage in usages)
    completion = sum(usage["completion_tokens"] for usage in usages)
    assert prompt > 0 and completion > 0
    assert value(samples, tokens, backend="upstream", direction="in") == prompt
    assert value(samples, tokens, backend="upstream", direction="out") == completion


def test_metrics_speak_openmetrics_when_asked(make_app):
    client = make_app(API_KEY=KEY).test_client()
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).endswith("# EOF\n")


def test_rate_limit_rejections_are_counted_apart_from_upstream_429(make_app, fake):
    client = make_app(MINUTE_LIMIT="3").test_client()
    fake.push(Reply(status=429, body={"error": {"code": "rate_limit_exceeded"}}))
    # The client's own key: the upstream's 429 reaches it as upstream_rate_limited.
    first = ask(client, api_key="sk-own-key-0001")
    assert (first.status_code, first.get_json()["data"]["error"]) == (429, "upstream_rate_limited")
    assert ask(client, api_key="sk-own-key-0001").status_code == 200
    assert ask(client, api_key="sk-own-key-0001").status_code == 200
    assert ask(client, api_key="sk-own-key-0001").get_json()["data"]["error"] == "rate_limited"
    assert ask(client, api_key="sk-own-key-0001").status_code == 429
    assert client.post("/api/v1/chat/completions", json={"messages": []}).status_code == 429

    samples = scrape(client)
    assert value(samples, "chatservice_rate_limited_total", face="api") == 2
    assert value(samples, "chatservice_rate_limited_total", face="openai_api") == 1
    total_429 = value(samples, "chatservice_requests_total", face="api", route="/api", status="429")
    assert total_429 == 3
    # Refused by the limiter or not, every request is timed: 5 on /api, 1 on the OpenAI face.
    count = "chatservice_request_duration_seconds_count"
    assert value(samples, count, face="api", route="/api") == 5
    assert value(samples, count, face="openai_api", route="/api/v1/chat/completions") == 1


def test_key_states_are_exported_without_the_keys(make_app, fake, tmp_path):
    client = make_app(KEY_FILE=key_file(tmp_path, KEY_A, KEY_B)).test_client()
    keys = "chatservice_upstream_keys"
    samples = scrape(client)
    assert [
        value(samples, keys, upstream="default", state=s) for s in ("usable", "cooling", "disabled")
    ] == [2, 0, 0]

    fake.revoked = {KEY_A}
    assert ask(client).status_code == 200  # A refused and disabled, B answered
    samples = scrape(client)
    assert [
        value(samples, keys, upstream="default", state=s) for s in ("usable", "cooling", "disabled")
    ] == [1, 0, 1]

    rate_limited = {"error": {"code": "rate_limit_exceeded"}}
    fake.push(Reply(status=429, body=rate_limited, headers={"Retry-After": "30"}))
    assert ask(client).status_code == 429  # B cools down; the client gets the upstream's 429
    response = client.get("/metrics")
    samples = parse(response.get_data(as_text=True))
    assert [
        value(samples, keys, upstream="default", state=s) for s in ("usable", "cooling", "disabled")
    ] == [0, 1, 1]
    text = response.get_data(as_text=True)
    for key in (KEY_A, KEY_B):
        assert key not in text and key_id(Secret(key)) not in text


def test_streams_in_flight_rise_and_fall(make_app, fake):
    client = make_app(API_KEY=KEY).test_client()
    in_flight = "chatservice_streams_in_flight"
    assert value(scrape(client), in_flight) == 0
    stream = ask(client, "one two three", stream=True)  # started, body not yet read
    assert stream.mimetype == "text/event-stream"
    assert value(scrape(client), in_flight) == 1
    assert stream.get_data(as_text=True).endswith("data: [DONE]\n\n")
    stream.close()
    samples = scrape(client)
    assert value(samples, in_flight) == 0
    assert value(samples, "chatservice_backend_duration_seconds_count", backend="upstream") == 1

    # An upstream dropping the stream halfway counts as an error of its own type.
    fake.push(Reply(text="one two three four", drop_after=2))
    broken = ask(client, stream=True)
    assert '"upstream_interrupted"' in broken.get_data(as_text=True)
    broken.close()
    samples = scrape(client)
    errors = "chatservice_backend_errors_total"
    assert value(samples, errors, backend="upstream", type="upstream_interrupted") == 1
    assert value(samples, in_flight) == 0


def _answered_by_worker(metrics_dir: Path, route: str = "/api") -> dict[int, float]:
    """Requests to ``route`` each worker counted, read from its own file of the shared dir."""
    counts = {}
    for path in metrics_dir.glob("counter_*.db"):
        merged = MultiProcessCollector.merge([str(path)])
        counts[int(path.stem.split("_")[1])] = sum(
            sample.value
            for metric in merged
            for sample in metric.samples
            if sample.name == "chatservice_requests_total" and sample.labels["route"] == route
        )
    return counts


def test_metrics_add_up_across_workers(live_server, upstream, tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    server = live_server(WORKERS="2", API_KEY=KEY, TMPDIR=str(tmp))
    (metrics_dir,) = tmp.glob("chatservice-metrics-*")
    assert metrics_dir.stat().st_mode & 0o777 == 0o700
    upstream.default = Reply(delay=0.05)  # overlapping requests spread over both workers

    def post(_: int) -> int:
        payload = {"user_content": "hi"}
        return requests.post(server.url + "/api", json=payload, timeout=10).status_code

    sent = 0
    deadline = time.monotonic() + 20
    with ThreadPoolExecutor(16) as pool:
        while len([n for n in _answered_by_worker(metrics_dir).values() if n]) < 2:
            assert time.monotonic() < deadline, "one worker answered every request"
            assert list(pool.map(post, range(16))) == [200] * 16
            sent += 16

    def total() -> float:
        response = requests.get(server.url + "/metrics", timeout=10)
        samples = parse(response.text)
        assert value(samples, "chatservice_upstream_keys", upstream="default", state="usable") == 1
        return value(samples, "chatservice_requests_total", face="api", route="/api", status="200")

    # Whichever worker answers the scrape, it reports everyone's requests.
    assert [total() for _ in range(6)] == [sent] * 6

    # A worker that dies leaves its counts behind and its live gauge is dropped (child_exit).
    first_workers = set(_answered_by_worker(metrics_dir))
    dead = next(pid for pid, n in _answered_by_worker(metrics_dir).items() if n)
    os.kill(dead, signal.SIGTERM)
    gauge = metrics_dir / f"gauge_livesum_{dead}.db"
    deadline = time.monotonic() + 15
    while gauge.exists():
        assert time.monotonic() < deadline, "the dead worker's gauge file is still there"
        time.sleep(0.05)
    # Its replacement, which never saw a chat request, reports them all as well.
    deadline = time.monotonic() + 20
    while not any(
        n
        for pid, n in _answered_by_worker(metrics_dir, "/metrics").items()
        if pid not in first_workers
    ):
        assert time.monotonic() < deadline, "the replacement worker answered no scrape"
        assert total() == sent

    server.stop()
    assert not metrics_dir.exists()  # on_exit removed the directory


# --- security headers -----------------------------------------------------------------------


def assert_security_headers(response) -> None:
    for name, expected in SECURITY.items():
        assert response.headers.get(name) == expected, name


def test_security_headers_on_answers_errors_and_streams(make_app, fake):
    app = make_app(API_KEY=KEY)

    @app.route("/own-policy")
    def own_policy() -> Response:
        return Response("x", headers={"X-Frame-Options": "SAMEORIGIN", "Referrer-Policy": "origin"})

    client = app.test_client()
    answer = ask(client)
    assert answer.status_code == 200
    assert_security_headers(answer)
    bad = client.post("/api", data="{not json", content_type="application/json")
    assert bad.status_code == 400
    assert_security_headers(bad)
    assert_security_headers(client.get("/api/no/such/path"))
    assert_security_headers(client.get("/healthz"))
    stream = ask(client, stream=True)
    assert_security_headers(stream)
    stream.close()

    own = client.get("/own-policy")
    assert own.headers["X-Frame-Options"] == "SAMEORIGIN"
    assert own.headers["Referrer-Policy"] == "origin"
    assert own.headers["X-Content-Type-Options"] == "nosniff"


# --- CORS ------------------------------------------------------------------------------------


def preflight(client, path: str, origin: str = ORIGIN):
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )


def test_cors_preflight_and_request_from_an_allowed_origin(make_app, fake):
    app = make_app(
        API_KEY=KEY,
        CORS_ORIGINS=f"https://other.example, {ORIGIN}/",
        SECOND_LIMIT="1",
        AUTH_MODE="simple",
        AUTH_TOKEN="tok-cors",
    )
    client = app.test_client()
    for _ in range(3):  # no credentials, and none of them spends the rate limit
        response = preflight(client, "/api/v1/chat/completions")
        assert response.status_code == 200
        assert response.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "POST" in response.headers["Access-Control-Allow-Methods"]
        allowed = {
            h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")
        }
        assert {h.lower() for h in http_headers.ALLOW_HEADERS} <= allowed
        assert {"content-type", "authorization", "token", "uuid", "x-room-id"} <= allowed
        assert "Origin" in response.headers["Vary"]
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        assert "Access-Control-Allow-Credentials" not in response.headers

    actual = client.post(
        "/api/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}]},
        headers={"Origin": ORIGIN, "Authorization": "Bearer tok-cors"},
    )
    assert actual.status_code == 200
    assert actual.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Origin" in actual.headers["Vary"]
    exposed = {h.strip() for h in actual.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Retry-After", "X-Request-ID", "X-RateLimit-Remaining", "X-RateLimit-Reset"} <= exposed
    # A refusal stays readable by the page, Retry-After included.
    limited = client.post(
        "/api", json={"user_content": "hi"}, headers={"Origin": ORIGIN, "token": "tok-cors"}
    )
    assert limited.status_code == 429
    assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Retry-After" in limited.headers
    # Operations endpoints are not browser APIs.
    assert (
        "Access-Control-Allow-Origin"
        not in client.get("/healthz", headers={"Origin": ORIGIN}).headers
    )


def test_cors_refuses_other_origins(make_app, fake):
    client = make_app(API_KEY=KEY, CORS_ORIGINS=ORIGIN).test_client()
    response = preflight(client, "/api", origin="https://evil.example")
    assert "Access-Control-Allow-Origin" not in response.headers
    assert "Access-Control-Allow-Methods" not in response.headers
    actual = client.post(
        "/api", json={"user_content": "hi"}, headers={"Origin": "https://evil.example"}
    )
    assert actual.status_code == 200
    assert "Access-Control-Allow-Origin" not in actual.headers
    assert "Origin" in actual.headers["Vary"]  # a cache must not serve it to ORIGIN


def test_cors_is_off_without_cors_origins(make_app, fake):
    client = make_app(API_KEY=KEY).test_client()
    response = preflight(client, "/api")
    assert not [name for name in response.headers.keys() if name.startswith("Access-Control-")]
    actual = client.post("/api", json={"user_content": "hi"}, headers={"Origin": ORIGIN})
    assert not [name for name in actual.headers.keys() if name.startswith("Access-Control-")]
    assert "Origin" not in actual.headers.get("Vary", "")


def test_cors_star_allows_any_origin(make_app, fake):
    client = make_app(API_KEY=KEY, CORS_ORIGINS="*").test_client()
    response = preflight(client, "/api/chat-room", origin="http://localhost:3000")
    assert response.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
