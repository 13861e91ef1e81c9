"""ALLOWED_MODELS and MODEL_ALIASES on every face, the embedded model and /v1/models."""

from __future__ import annotations

import json

import pytest
import simple_websocket

from tests.conftest import ROOT

RU = json.loads((ROOT / "i18n" / "ru.json").read_text(encoding="utf-8"))
LOCAL = "smollm2-135m-instruct"


def policy_app(make_app, **env):
    return make_app(
        API_KEY="sk-x",
        ALLOWED_MODELS="gpt-4o*,gpt-3.5-turbo-instruct",
        MODEL_ALIASES="gpt-4=gpt-4o-mini,text-davinci-003=gpt-3.5-turbo-instruct",
        **env,
    ).test_client()


REQUESTS = [  # (path, body with the model, how to read the error key)
    ("/api", {"user_content": "hi"}, lambda b: b["data"]["error"]),
    ("/api/v1/chat", {"query": "hi"}, lambda b: b["data"]["error"]),
    (
        "/api/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        lambda b: b["error"]["code"],
    ),
    ("/api/v1/completions", {"prompt": "hi"}, lambda b: b["error"]["code"]),
]


@pytest.mark.parametrize(("path", "body", "key"), REQUESTS)
def test_a_model_outside_the_list_is_a_400_before_any_upstream_call(
    make_app, fake, path, body, key
):
    client = policy_app(make_app)
    r = client.post(path + "?lang=ru", json={**body, "model": "gpt-3.5-turbo"})
    assert r.status_code == 400
    assert key(r.get_json()) == "model_not_allowed"
    assert RU["model_not_allowed"].format(model="gpt-3.5-turbo") in r.get_data(as_text=True)
    assert fake.received == []


@pytest.mark.parametrize(("path", "body", "key"), REQUESTS)
def test_allowed_models_and_wildcards_pass(make_app, fake, path, body, key):
    client = policy_app(make_app)
    model = (
        "gpt-3.5-turbo-instruct"
        if path.endswith("/completions") and "prompt" in body
        else "gpt-4o-2024-08-06"
    )
    assert client.post(path, json={**body, "model": model}).status_code == 200
    assert fake.received[0].json["model"] == model


def test_aliases_replace_the_model_and_the_answer_names_the_real_one(make_app, fake):
    client = policy_app(make_app)
    r = client.post("/api", json={"user_content": "hi", "model": "gpt-4"})
    assert r.status_code == 200
    assert fake.received[0].json["model"] == "gpt-4o-mini"
    assert r.get_json()["data"]["model"] == "gpt-4o-mini"
    r = client.post("/api/v1/chat", json={"query": "hi", "model": "text-davinci-003"})
    assert r.status_code == 200
    assert fake.received[1].path == "/v1/completions"
    assert fake.received[1].json["model"] == "gpt-3.5-turbo-instruct"


def test_chat_room_uses_the_policy(make_app, fake):
    client = make_app(API_KEY="sk-x", ALLOWED_MODELS="gpt-4o", CHAT_MODEL="gpt-4").test_client()
    r = client.post("/api/chat-room", json={"role": "user", "content": "hi"})
    assert r.status_code == 400 and r.get_json()["error"] == "model_not_allowed"
    assert fake.received == []


def test_models_list_shows_only_allowed_models(make_app, fake):
    client = make_app(ALLOWED_MODELS="gpt-4o*").test_client()  # no key: the embedded model
    r = client.get("/api/v1/models")
    assert r.status_code == 200 and r.get_json()["data"] == []
    assert client.get(f"/api/v1/models/{LOCAL}").status_code == 404
    client = make_app(ALLOWED_MODELS=f"{LOCAL},gpt-4o*").test_client()
    assert [m["id"] for m in client.get("/api/v1/models").get_json()["data"]] == [LOCAL]


def test_embedded_model_can_be_allowed_and_aliased(make_app, fake):
    client = make_app(
        API_KEY="sk-x", ALLOWED_MODELS=LOCAL, MODEL_ALIASES=f"gpt-3.5-turbo={LOCAL}"
    ).test_client()
    r = client.post("/api/v1/chat", json={"query": "Say hi.", "max_tokens": 4})
    assert r.status_code == 200
    assert r.get_json()["data"]["model"] == LOCAL
    assert fake.received == []  # the alias sent it to the embedded model despite API_KEY


def test_embedded_model_is_refused_when_not_allowed(make_app, fake):
    client = make_app(ALLOWED_MODELS="gpt-4o").test_client()  # no key: embedded model
    r = client.post("/api", json={"user_content": "hi", "model": LOCAL})
    assert r.status_code == 400 and r.get_json()["data"]["error"] == "model_not_allowed"


def test_websocket_frames_use_the_policy(live_server, upstream):
    server = live_server(API_KEY="sk-x", ALLOWED_MODELS="gpt-4o")
    ws = simple_websocket.Client.connect(server.url.replace("http", "ws") + "/api/ws")
    try:
        ws.send(json.dumps({"seq": "1", "data": {"query": "hi", "model": "gpt-3.5-turbo"}}))
        frame = json.loads(ws.receive(timeout=10))
    finally:
        ws.close()
    assert frame["code"] == 400 and frame["data"]["error"] == "model_not_allowed"
    assert upstream.received == []
