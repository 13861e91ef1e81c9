"""Per-upstream state: key marks namespaced by upstream, /readyz, /admin/keys and the key
metrics over every upstream, shared connections to one host, through the app and real fake
upstreams on loopback.
"""

from __future__ import annotations

from typing import Any

from chatservice.backends.keypool import key_id
from chatservice.settings import Secret
from tests.conftest import entry
from tests.fakeupstream import Reply
from tests.test_ops import parse, value

ADMIN = {"Authorization": "Bearer admin-secret-token"}
SHARED_KEY = "sk-shared-by-two-providers-5555eeee"
OTHER_KEY = "sk-only-at-the-second-one-6666ffff"


def ask(client) -> Any:
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
    return client.post("/api/v1/chat/completions", json=body)


def bearer(received: Any) -> str:
    return received.headers.get("Authorization", "").removeprefix("Bearer ")


# --- key marks per upstream -------------------------------------------------------------------


def test_a_key_refused_by_one_upstream_stays_in_use_at_the_other(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("direct", a, api_key=SHARED_KEY, priority=1),
        entry("second-base-url", b, api_key=SHARED_KEY),
    ).test_client()
    a.revoked = {SHARED_KEY}  # the first provider revoked it: 401 invalid_api_key
    for _ in range(3):
        response = ask(client)
        assert response.status_code == 200, response.get_json()
    assert len(a.received) == 1  # refused once, then skipped: no usable key there
    assert [bearer(item) for item in b.received] == [SHARED_KEY] * 3
    view = client.get("/api/admin/keys", headers=ADMIN).get_json()
    states = {row["upstream"]: row["state"] for row in view["keys"]}
    assert states == {"direct": "disabled", "second-base-url": "usable"}


def test_the_default_upstream_still_reads_marks_written_before_upstreams_had_names(make_app):
    app = make_app(API_KEY=SHARED_KEY, ADMIN_TOKEN="admin-secret-token")
    state = app.extensions["chatservice"].shared_state
    state.set(f"key:{key_id(Secret(SHARED_KEY))}:disabled", "1")  # the old mark's name
    view = app.test_client().get("/api/admin/keys", headers=ADMIN).get_json()
    assert [(row["upstream"], row["state"]) for row in view["keys"]] == [("default", "disabled")]
    assert app.test_client().get("/readyz").get_json()["checks"]["backend"] == "no_usable_key"


def test_key_metrics_count_each_upstreams_keys_apart(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("direct", a, api_key=SHARED_KEY, priority=1),
        entry("second-base-url", b, api_key=[SHARED_KEY, OTHER_KEY]),
    ).test_client()
    a.revoked = {SHARED_KEY}
    assert ask(client).status_code == 200
    text = client.get("/metrics").get_data(as_text=True)
    samples = parse(text)
    counts = {
        (name, state): value(samples, "chatservice_upstream_keys", upstream=name, state=state)
        for name in ("direct", "second-base-url")
        for state in ("usable", "disabled")
    }
    assert counts == {
        ("direct", "usable"): 0,
        ("direct", "disabled"): 1,
        ("second-base-url", "usable"): 2,
        ("second-base-url", "disabled"): 0,
    }
    assert SHARED_KEY not in text and key_id(Secret(SHARED_KEY)) not in text


# --- /admin/keys ------------------------------------------------------------------------------


def test_admin_keys_lists_every_upstream_grouped_by_name_and_masked(routed, fakes):
    a, b, _ = fakes
    response = (
        routed(
            entry("openai", a, api_key=SHARED_KEY),
            entry("deepseek", b, api_key=[SHARED_KEY, OTHER_KEY]),
            entry("ollama", b),
        )
        .test_client()
        .get("/api/admin/keys", headers=ADMIN)
    )
    assert response.status_code == 200
    text = response.get_data(as_text=True)
    assert SHARED_KEY not in text and OTHER_KEY not in text and "5555eeee" not in text
    body = response.get_json()
    grouped = {name: [row["key"] for row in rows] for name, rows in body["upstreams"].items()}
    assert grouped == {
        "openai": ["sk-...eeee"],
        "deepseek": ["sk-...eeee", "sk-...ffff"],
        "ollama": [],  # keyless (Ollama, vLLM); the embedded model has no keys and no entry
    }
    assert [(row["upstream"], row["key"]) for row in body["keys"]] == [
        ("openai", "sk-...eeee"),
        ("deepseek", "sk-...eeee"),
        ("deepseek", "sk-...ffff"),
    ]


def test_admin_keys_without_a_list_names_the_default_upstream(make_app):
    app = make_app(API_KEY=SHARED_KEY, ADMIN_TOKEN="admin-secret-token")
    body = app.test_client().get("/api/admin/keys", headers=ADMIN).get_json()
    assert list(body["upstreams"]) == ["default"]
    assert body["keys"][0]["upstream"] == "default" and body["keys"][0]["key"] == "sk-...eeee"


# --- /readyz ----------------------------------------------------------------------------------


def test_readyz_stays_ready_while_one_upstream_can_answer_and_names_the_others(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("direct", a, api_key=SHARED_KEY, priority=1),
        entry("second-base-url", b, api_key=OTHER_KEY),
        BACKEND="openai",  # no embedded model among the upstreams
    ).test_client()
    first = client.get("/readyz")
    assert first.status_code == 200
    assert first.get_json()["upstreams"] == {"direct": "ok", "second-base-url": "ok"}
    a.revoked = {SHARED_KEY}
    assert ask(client).status_code == 200  # "direct" disabled its key, the other answered
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["checks"]["backend"] == "ok"
    assert body["upstreams"] == {"direct": "no_usable_key", "second-base-url": "ok"}
    b.revoked = {OTHER_KEY}
    assert ask(client).status_code == 503
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"]["backend"] == "no_usable_upstream" and body["failing"] == ["backend"]
    assert body["upstreams"] == {"direct": "no_usable_key", "second-base-url": "no_usable_key"}
    assert SHARED_KEY not in response.get_data(as_text=True)


def test_readyz_names_an_upstream_whose_breaker_is_open(routed, fakes):
    a, b, _ = fakes
    client = routed(
        entry("flaky", a, priority=1),
        entry("steady", b),
        BACKEND="openai",
        UPSTREAM_BREAKER_FAILURES="1",
    ).test_client()
    a.default = Reply(status=503, body={})
    assert ask(client).status_code == 200  # moved on to "steady"; "flaky" opened
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert body["upstreams"] == {"flaky": "breaker_open", "steady": "ok"}


def test_readyz_counts_the_embedded_model_as_one_upstream(routed, fakes, tmp_path):
    a, *_ = fakes
    client = routed(
        entry("remote", a, api_key=SHARED_KEY),
        {"name": "local", "type": "local", "models": ["*"], "priority": -1},
        LOCAL_MODEL_PATH=str(tmp_path / "absent.gguf"),
    ).test_client()
    body = client.get("/readyz").get_json()
    assert body["status"] == "ready"
    assert body["upstreams"] == {"remote": "ok", "local": "model_missing"}


# --- connections ------------------------------------------------------------------------------


def test_upstreams_on_one_host_share_its_keep_alive_connections(routed, fakes):
    a, *_ = fakes
    client = routed(
        entry("account-1", a, api_key=SHARED_KEY),
        entry("account-2", a, api_key=OTHER_KEY),
    ).test_client()
    for _ in range(6):
        assert ask(client).status_code == 200
    received = a.wait_for(6)
    assert {bearer(item) for item in received} == {SHARED_KEY, OTHER_KEY}  # both took turns
    assert len({item.peer for item in received}) == 1  # one after the other, on one connection
