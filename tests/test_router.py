"""Several upstreams behind one endpoint: routing by model, priority, weight, fallback,
breakers, the model list and the admin view, through the app and real fake upstreams.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from chatservice.settings import ConfigError
from tests.conftest import entry, free_port, settings_from
from tests.fakeupstream import Reply

ADMIN = {"Authorization": "Bearer admin-secret-token"}
KEY_A = "sk-secret-key-of-a-1111aaaa"


def ask_openai(client, model: str = "gpt-4o", stream: bool = False, **extra: Any):
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], **extra}
    if stream:
        body["stream"] = True
    return client.post("/api/v1/chat/completions", json=body, buffered=True)


def answered_text(response) -> str:
    """The answer of any face's response: JSON faces and the OpenAI face, plain or streamed."""
    if response.mimetype == "text/event-stream":
        text = ""
        for line in response.get_data(as_text=True).splitlines():
            if line.startswith("data: {"):
                event = json.loads(line[6:])
                choices = event.get("choices") or [{}]
                text += (choices[0].get("delta") or {}).get("content") or ""
        return text
    body = response.get_json()
    if "choices" in body:
        return body["choices"][0]["message"]["content"]
    return body["data"]["response"]


FACES = {
    "api": lambda c, m: c.post("/api", json={"user_content": "hi", "model": m}),
    "chat": lambda c, m: c.post("/api/v1/chat", json={"query": "hi", "model": m}),
    "openai": lambda c, m: ask_openai(c, m),
    "openai-stream": lambda c, m: ask_openai(c, m, stream=True),
}


# --- configuration ---------------------------------------------------------------------------


def test_toml_list_of_tables_is_read(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        """
upstream_fallbacks = 1

[[upstreams]]
name = "openai"
base_url = "https://api.openai.com/v1"
api_key = ["sk-one-aaaaaaaaaaaa", "sk-two-bbbbbbbbbbbb"]
models = ["gpt-4o*"]
priority = 10

[[upstreams]]
name = "deepseek"
base_url = "https://api.deepseek.com/v1"
weight = 3
headers = { "api-version" = "2024-06-01" }
[upstreams.model_map]
"gpt-4o" = "deepseek-chat"

[[upstreams]]
name = "local"
type = "local"
models = ["*"]
priority = -1
"""
    )
    settings = settings_from({"CONFIG_FILE": str(config)})
    names = [spec.name for spec in settings.upstreams]
    assert names == ["openai", "deepseek", "local"]
    openai, deepseek, local = settings.upstreams
    assert openai.priority == 10 and openai.models == ("gpt-4o*",) and len(openai.api_keys) == 2
    assert deepseek.model_map == {"gpt-4o": "deepseek-chat"} and deepseek.weight == 3
    assert deepseek.headers == {"api-version": "2024-06-01"}
    assert local.local and settings.upstream_fallbacks == 1
    assert "sk-one" not in repr(settings)


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([{"name": "a"}], "UPSTREAMS: entry 1 (a): base_url: required for an openai upstream"),
        ([{"name": "a", "base_url": "ftp://x"}], "UPSTREAMS: entry 1 (a): base_url: expected"),
        (
            [{"name": "a", "type": "local"}, {"name": "b", "type": "local", "weight": 0}],
            "UPSTREAMS: entry 2 (b): weight: expected a number > 0",
        ),
        ([{"name": "a", "type": "local", "wieght": 2}], "UPSTREAMS: entry 1 (a): wieght: unknown"),
        ([{"name": "a", "type": "local"}] * 2, "UPSTREAMS: entry 2 (a): name: 'a' is used twice"),
        ([{"name": "a b", "type": "local"}], "UPSTREAMS: entry 1 (a b): name: expected"),
        (
            [{"name": "a", "type": "local", "priority": "high"}],
            "UPSTREAMS: entry 1 (a): priority: ",
        ),
    ],
)
def test_an_invalid_entry_is_one_line_naming_entry_and_field(entries, message):
    with pytest.raises(ConfigError) as info:
        settings_from({"UPSTREAMS": json.dumps(entries)})
    assert str(info.value).startswith(message)
    assert "\n" not in str(info.value)


# --- routing ---------------------------------------------------------------------------------


def test_routing_by_model_sends_the_providers_model_name(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("openai", a, models=["gpt-4o*"]),
        entry("deepseek", b, models=["deepseek-*"], model_map={"cheap": "deepseek-chat"}),
    ).test_client()
    assert answered_text(ask_openai(client, "gpt-4o-mini")) == "echo: hi"
    assert answered_text(ask_openai(client, "cheap")) == "echo: hi"
    assert answered_text(ask_openai(client, "deepseek-coder")) == "echo: hi"
    assert [r.json["model"] for r in a.received] == ["gpt-4o-mini"]
    assert [r.json["model"] for r in b.received] == ["deepseek-chat", "deepseek-coder"]


def test_a_model_no_upstream_serves_is_a_localized_404(routed, fakes):
    client = routed(entry("openai", fakes[0], models=["gpt-4o*"])).test_client()
    r = ask_openai(client, "claude-3")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "model_not_found"
    assert "claude-3" in r.get_json()["error"]["message"]
    r = client.post("/api", json={"user_content": "hi", "model": "claude-3", "lang": "zh_CN"})
    assert r.status_code == 404 and r.get_json()["data"]["error"] == "model_not_found"
    assert "模型" in r.get_json()["data"]["response"]
    assert fakes[0].received == []


def test_models_omitted_means_what_the_upstream_lists(routed, fakes):
    a, b, _ = fakes
    b.models = ["llama3", "qwen2"]
    client = routed(
        entry("openai", a, models=["gpt-4o"]), entry("ollama", b, models=[])
    ).test_client()
    assert answered_text(ask_openai(client, "qwen2")) == "echo: hi"
    assert b.received[0].json["model"] == "qwen2" and a.received == []
    assert ask_openai(client, "mistral").status_code == 404


def test_the_higher_priority_is_tried_first(routed, fakes):
    a, b, _ = fakes
    client = routed(entry("low", a, priority=0), entry("high", b, priority=10)).test_client()
    for _ in range(5):
        assert ask_openai(client).status_code == 200
    assert len(b.received) == 5 and a.received == []


def test_weights_3_to_1_share_1000_requests_within_5_percent(routed, fakes):
    a, b, _ = fakes
    client = routed(entry("three", a, weight=3), entry("one", b, weight=1)).test_client()
    for _ in range(1000):
        assert client.post("/api", json={"user_content": "hi"}).status_code == 200
    share = len(a.received) / 1000
    assert abs(share - 0.75) <= 0.05, share
    assert len(a.received) + len(b.received) == 1000


def test_a_client_key_goes_only_where_client_keys_is_set(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("mine", a, priority=1, api_key=KEY_A),
        entry("theirs", b, client_keys=True),
    ).test_client()
    headers = {"Authorization": "Bearer sk-client-own-key-9999"}
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    a.push(Reply(status=503, body={}))
    assert client.post("/api/v1/chat/completions", json=body, headers=headers).status_code == 200
    assert a.received[0].headers["Authorization"] == f"Bearer {KEY_A}"
    assert b.received[0].headers["Authorization"] == "Bearer sk-client-own-key-9999"


def test_extra_headers_and_query_reach_the_upstream(routed, fakes):
    a = fakes[0]
    client = routed(
        entry("azure", a, headers={"api-key-extra": "x1"}, query={"api-version": "2024-06-01"})
    ).test_client()
    assert ask_openai(client).status_code == 200
    assert a.received[0].headers["api-key-extra"] == "x1"
    assert a.received[0].path == "/v1/chat/completions?api-version=2024-06-01"


# --- fallback ----------------------------------------------------------------------------------

FAULTS = {
    "refused": None,
    "dropped": Reply(drop=True),
    "503": Reply(status=503, body={"error": {"message": "overloaded"}}),
    "429": Reply(status=429, body={"error": {"code": "rate_limit_exceeded"}}),
    "first-byte-timeout": Reply(stall=3.0),
}


@pytest.mark.parametrize("face", FACES)
@pytest.mark.parametrize("fault", FAULTS)
def test_fallback_to_the_next_upstream(routed, fakes, face, fault):
    a, b, _ = fakes
    first = f"http://127.0.0.1:{free_port()}/v1" if fault == "refused" else a
    if FAULTS[fault] is not None:
        a.push(FAULTS[fault])
    client = routed(
        entry("first", first, priority=1, read_timeout=0.5), entry("second", b)
    ).test_client()
    r = FACES[face](client, "gpt-4o")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert answered_text(r) == "echo: hi"
    assert len(b.received) == 1
    if fault != "refused":
        assert len(a.received) == 1


def test_fallbacks_are_bounded_by_upstream_fallbacks(routed, fakes):
    a, b, c = fakes
    for fake in fakes:
        fake.push(Reply(status=503, body={}))
    client = routed(
        entry("a", a, priority=3),
        entry("b", b, priority=2),
        entry("c", c, priority=1),
        UPSTREAM_FALLBACKS="1",
    ).test_client()
    r = ask_openai(client)
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "upstream_overloaded"
    assert (len(a.received), len(b.received), len(c.received)) == (1, 1, 0)


def test_a_client_error_is_answered_without_trying_elsewhere(routed, fakes):
    a, b, _ = fakes
    a.push(Reply(status=400, body={"error": {"code": "invalid_value"}}))
    client = routed(entry("a", a, priority=1), entry("b", b)).test_client()
    r = ask_openai(client)
    assert r.status_code == 400 and b.received == []


def test_a_404_at_one_provider_moves_to_another_serving_the_model(routed, fakes):
    a, b, _ = fakes
    a.push(Reply(status=404, body={"error": {"code": "model_not_found"}}))
    client = routed(entry("a", a, priority=1), entry("b", b)).test_client()
    assert ask_openai(client).status_code == 200 and len(b.received) == 1


def test_no_fallback_once_a_stream_started(routed, fakes):
    a, b, _ = fakes
    a.push(Reply(text="one two three four", drop_after=2))
    client = routed(entry("a", a, priority=1), entry("b", b)).test_client()
    r = ask_openai(client, stream=True)
    body = r.get_data(as_text=True)
    assert r.status_code == 200 and '"upstream_interrupted"' in body
    assert answered_text(r) == "one two"
    assert b.received == []


def test_the_embedded_model_is_an_upstream_too(routed, fakes, monkeypatch):
    from chatservice.backends.local import LocalBackend
    from chatservice.models import ChatResult

    def complete(self, req):
        return ChatResult(text="local answer", finish_reason="stop", model="local-x", raw={})

    monkeypatch.setattr(LocalBackend, "complete", complete)
    client = routed(
        entry("a", fakes[0], priority=1), {"name": "mini", "type": "local", "models": ["*"]}
    ).test_client()
    fakes[0].push(Reply(status=500, body={}))
    r = client.post("/api", json={"user_content": "hi"})
    assert r.status_code == 200 and r.get_json()["data"]["response"] == "local answer"


# --- breakers ---------------------------------------------------------------------------------


def wait_for_breaker(client, name: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        view = client.get("/api/admin/upstreams", headers=ADMIN).get_json()
        row = next(row for row in view["upstreams"] if row["name"] == name)
        if row["breaker"] == state:
            return row
        assert time.monotonic() < deadline, row
        time.sleep(0.05)


def test_the_breaker_opens_probes_and_closes(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("a", a, priority=1),
        entry("b", b),
        UPSTREAM_BREAKER_FAILURES="2",
        UPSTREAM_BREAKER_COOLDOWN="0.5",
    ).test_client()
    a.push(Reply(status=503, body={}), Reply(status=503, body={}))
    for _ in range(2):
        assert ask_openai(client).status_code == 200  # b answered
    row = wait_for_breaker(client, "a", "open")
    assert row["breaker_until"] > time.time()
    assert ask_openai(client).status_code == 200
    assert len(a.received) == 2 and len(b.received) == 3  # a skipped while open

    wait_for_breaker(client, "a", "half_open")
    a.push(Reply(status=503, body={}))  # the probe fails: open again, for longer
    assert ask_openai(client).status_code == 200
    row = wait_for_breaker(client, "a", "open")
    assert row["breaker_until"] - time.time() > 0.5  # the cooldown doubled to 1 s

    wait_for_breaker(client, "a", "half_open")
    assert ask_openai(client).status_code == 200  # the probe succeeds
    assert len(a.received) == 4
    wait_for_breaker(client, "a", "closed")
    assert ask_openai(client).status_code == 200 and len(a.received) == 5


def test_every_breaker_open_is_a_localized_503_with_retry_after(routed, fakes):
    a = fakes[0]
    client = routed(
        entry("a", a), UPSTREAM_BREAKER_FAILURES="1", UPSTREAM_BREAKER_COOLDOWN="30"
    ).test_client()
    a.push(Reply(status=502, body={}))
    assert ask_openai(client).status_code == 502
    r = ask_openai(client, lang="ru")
    assert r.status_code == 503 and r.get_json()["error"]["code"] == "upstreams_unavailable"
    assert 1 <= int(r.headers["Retry-After"]) <= 30
    assert "Все" in r.get_json()["error"]["message"]
    assert len(a.received) == 1


def test_a_refused_request_moves_on_without_charging_the_breaker(routed, fakes):
    # A 403 refuses this request (a provider's model restriction, moderation): another
    # provider may answer it, but one client's request must not open every breaker.
    a, b, _ = fakes
    client = routed(
        entry("a", a, priority=1),
        entry("b", b),
        UPSTREAM_BREAKER_FAILURES="1",
        UPSTREAM_BREAKER_COOLDOWN="30",
    ).test_client()
    refusal = {"error": {"code": "content_policy", "type": "invalid_request_error"}}
    a.push(Reply(status=403, body=refusal), Reply(status=403, body=refusal))
    assert ask_openai(client).status_code == 200  # b answered
    b.push(Reply(status=403, body=refusal))
    r = ask_openai(client)  # refused everywhere: the upstream's own 403
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "upstream_refused"
    view = client.get("/api/admin/upstreams", headers=ADMIN).get_json()["upstreams"]
    breakers = {row["name"]: row["breaker"] for row in view}
    assert (breakers["a"], breakers["b"]) == ("closed", "closed")
    assert ask_openai(client).status_code == 200 and len(a.received) == 3


# --- models, admin, logs, metrics -------------------------------------------------------------


def test_v1_models_lists_the_union_once_each(routed, fakes):
    a, b, _ = fakes
    b.models = ["deepseek-chat", "deepseek-reasoner"]
    client = routed(
        entry("openai", a, models=["gpt-4o", "gpt-4o-mini", "o*"], priority=1),
        entry("deepseek", b, models=[], model_map={"gpt-4o": "deepseek-chat"}),
    ).test_client()
    data = client.get("/api/v1/models").get_json()["data"]
    ids = [model["id"] for model in data]
    assert sorted(ids) == sorted(
        ["gpt-4o", "gpt-4o-mini", "deepseek-chat", "deepseek-reasoner", "smollm2-135m-instruct"]
    )
    owners = {model["id"]: model["owned_by"] for model in data}
    assert owners["gpt-4o"] == "openai" and owners["deepseek-chat"] == "deepseek"
    one = client.get("/api/v1/models/deepseek-reasoner")
    assert one.status_code == 200 and one.get_json()["owned_by"] == "deepseek"


def test_the_admin_view_shows_upstreams_and_no_key(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("openai", a, api_key=[KEY_A], priority=2, weight=2, models=["gpt-4o"]),
        entry("deepseek", b, api_key="sk-deepseek-secret-2222bbbb"),
    ).test_client()
    assert client.get("/api/admin/upstreams").status_code == 401
    for _ in range(3):
        ask_openai(client)
    r = client.get("/api/admin/upstreams", headers=ADMIN)
    text = r.get_data(as_text=True)
    assert KEY_A not in text and "sk-deepseek-secret" not in text and "1111aaaa" not in text
    rows = {row["name"]: row for row in r.get_json()["upstreams"]}
    assert set(rows) == {"openai", "deepseek", "local"}
    openai = rows["openai"]
    assert openai["host"] == "127.0.0.1" and openai["models"] == ["gpt-4o"]
    assert (openai["priority"], openai["weight"], openai["breaker"]) == (2, 2.0, "closed")
    assert openai["keys"][0]["key"] == "sk-...aaaa" and openai["keys"][0]["state"] == "usable"
    assert (openai["requests"], openai["failures"]) == (3, 0)
    assert openai["latency_p50_ms"] > 0
    assert rows["deepseek"]["requests"] == 0 and rows["deepseek"]["latency_p50_ms"] is None


def test_access_log_and_metrics_name_the_upstream(routed, fakes, caplog):
    a, b, _ = fakes
    client = routed(entry("first", a, priority=1), entry("second", b)).test_client()
    a.push(Reply(status=503, body={}))
    with caplog.at_level("INFO", logger="chatservice.access"):
        assert ask_openai(client).status_code == 200
    [record] = [r for r in caplog.records if r.name == "chatservice.access"]
    assert record.access["upstream"] == "second" and record.access["backend"] == "upstream"
    assert record.getMessage().endswith("backend=upstream upstream=second usage=reported")
    metrics = client.get("/metrics").get_data(as_text=True)
    assert (
        'chatservice_upstream_attempts_total{result="upstream_overloaded",upstream="first"} 1.0'
        in metrics
    )
    assert 'chatservice_upstream_attempts_total{result="ok",upstream="second"} 1.0' in metrics
    assert 'chatservice_upstream_duration_seconds_count{upstream="second"} 1.0' in metrics
