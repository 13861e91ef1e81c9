"""Client authentication (Alice ChatGPT's AUTH_MODE none/simple/normal) on every face.

Most tests use Flask's test client against apps whose upstream is the fake one; the WebSocket
handshake is checked against a real server (``python3 app.py``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid as uuidlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import simple_websocket
from flask import Blueprint, Flask

from chatservice import auth
from chatservice.settings import ConfigError
from tests.conftest import settings_from

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = {
    lang: json.loads((ROOT / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "zh_CN", "zh_TW", "ru")
}
TOKEN = "alice-service-token-7f3a9c"
UPSTREAM_KEY = "sk-x"


def signed(uuid: str | None = None, token: str = TOKEN) -> dict[str, str]:
    """Normal-mode headers: ``uuid`` and ``token`` = hex SHA-256 of AUTH_TOKEN + uuid."""
    uuid = uuid or uuidlib.uuid4().hex
    return {"uuid": uuid, "token": hashlib.sha256((token + uuid).encode()).hexdigest()}


def message(key: str, lang: str = "en") -> str:
    return CATALOGS[lang][key].format(max=auth.MAX_UUID_LENGTH)


# --- the faces --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Face:
    """One HTTP face: how to call it, and how its success and error bodies look."""

    name: str
    path: str
    body: Any
    error: Callable[[str, str], Any]  # (key, message) -> the whole error body
    answered: Callable[[Any], bool]

    def call(self, client: Any, headers: dict[str, str] | None = None, query: str = "") -> Any:
        kwargs: dict[str, Any] = {"headers": headers or {}}
        if isinstance(self.body, str):
            kwargs.update(data=self.body, content_type="text/plain")
        else:
            kwargs["json"] = self.body
        return client.post(self.path + query, **kwargs)


def _conversation_id(response: Any) -> bool:
    # Alice ChatGPT: createTurbo answers the new conversation's id as plain text ("5dCMMKFI").
    text = response.get_data(as_text=True).strip()
    return bool(text) and " " not in text


FACES = [
    Face(
        "api",
        "/api",
        {"user_content": "hi"},
        lambda key, msg: {"code": 401, "msg": "failed", "data": {"response": msg, "error": key}},
        lambda r: r.get_json()["current_response"] == "echo: hi",
    ),
    Face(
        "chat",
        "/api/v1/chat",
        {"query": "hi"},
        lambda key, msg: {"code": 401, "msg": msg, "data": {"error": key}},
        lambda r: r.get_json()["data"]["response"] == "echo: hi",
    ),
    Face(
        "openai_api",
        "/api/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        lambda key, msg: {
            "error": {"message": msg, "type": "authentication_error", "param": None, "code": key}
        },
        lambda r: r.get_json()["choices"][0]["message"]["content"] == "echo: hi",
    ),
    Face(
        "chatroom",
        "/api/chat-room",
        {"content": "hi"},
        lambda key, msg: {"code": 401, "msg": msg, "data": None, "error": key},
        lambda r: r.get_json() == {"code": 200, "msg": "success", "data": "echo: hi"},
    ),
    # Alice ChatGPT answers errors as the bare message.
    Face(
        "conversations",
        "/api/chatgpt/createTurbo",
        "You are terse.",
        lambda key, msg: msg,
        _conversation_id,
    ),
]
FACE_IDS = [face.name for face in FACES]


def assert_refused(face: Face, response: Any, key: str, lang: str = "en") -> None:
    assert response.status_code == 401, (response.status_code, response.get_data(as_text=True))
    assert body_of(response) == face.error(key, message(key, lang))


def body_of(response: Any) -> Any:
    """The parsed JSON body, or the text of a plain-text one."""
    if response.is_json:
        return response.get_json()
    return response.get_data(as_text=True)


def assert_answered(face: Face, response: Any) -> None:
    assert response.status_code == 200, (response.status_code, response.get_data(as_text=True))
    assert face.answered(response), response.get_data(as_text=True)


@pytest.fixture
def app_for(make_app) -> Callable[..., Flask]:
    def build(mode: str, **env: str) -> Flask:
        if mode != "none":
            env.setdefault("AUTH_TOKEN", TOKEN)
        return make_app(API_KEY=UPSTREAM_KEY, AUTH_MODE=mode, **env)

    return build


# --- none -------------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_none_mode_needs_no_credentials(app_for, face):
    assert_answered(face, face.call(app_for("none").test_client()))


def test_none_is_the_default(make_app):
    app = make_app(API_KEY=UPSTREAM_KEY)
    assert app.extensions["chatservice"].settings.auth_mode == "none"
    assert app.test_client().post("/api", json={"user_content": "hi"}).status_code == 200


# --- simple -----------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_simple_mode_refuses_a_request_without_token_in_the_face_envelope(app_for, face):
    client = app_for("simple").test_client()
    assert_refused(face, face.call(client), "auth_required")
    assert_refused(face, face.call(client, query="?lang=ru"), "auth_required", "ru")


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_simple_mode_refuses_a_wrong_token(app_for, face):
    client = app_for("simple").test_client()
    response = face.call(client, {"token": TOKEN + "x"}, query="?lang=zh_TW")
    assert_refused(face, response, "auth_failed", "zh_TW")
    assert TOKEN not in response.get_data(as_text=True)
    # A prefix of the token is as wrong as any other value.
    assert_refused(face, face.call(client, {"token": TOKEN[:-1]}), "auth_failed")


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_simple_mode_accepts_the_token(app_for, face):
    client = app_for("simple").test_client()
    assert_answered(face, face.call(client, {"token": TOKEN}))


def test_simple_mode_language_from_accept_language(app_for):
    face = FACES[0]
    response = face.call(app_for("simple").test_client(), {"Accept-Language": "zh-CN"})
    assert_refused(face, response, "auth_required", "zh_CN")


@pytest.mark.parametrize("face", FACES[:4], ids=FACE_IDS[:4])
def test_refusal_language_from_the_body_lang_field(app_for, face):
    client = app_for("simple").test_client()
    body = {**face.body, "lang": "ru"}
    response = client.post(face.path, json=body, headers={"Accept-Language": "zh-CN"})
    assert_refused(face, response, "auth_required", "ru")
    # The query parameter still comes first; junk bodies fall back to Accept-Language.
    response = client.post(face.path + "?lang=zh_TW", json=body)
    assert_refused(face, response, "auth_required", "zh_TW")
    for junk in (b'{"lang": ', b'["ru"]', b'{"lang": "ru", "pad": "' + b"x" * 70000 + b'"}'):
        response = client.post(face.path, data=junk, headers={"Accept-Language": "zh-CN"})
        assert_refused(face, response, "auth_required", "zh_CN")


def test_openai_face_accepts_the_token_as_a_bearer_in_simple_mode(app_for, fake):
    face = FACES[2]
    client = app_for("simple").test_client()
    assert_answered(face, face.call(client, {"Authorization": f"Bearer {TOKEN}"}))
    # The service token authenticated the client; the upstream got the configured key.
    assert fake.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"
    # SDKs insist on some api_key; with the token header the bearer does not matter.
    headers = {"token": TOKEN, "Authorization": "Bearer unused"}
    assert_answered(face, face.call(client, headers))


def test_openai_face_does_not_forward_an_sk_service_token_upstream(app_for, fake):
    # An AUTH_TOKEN that looks like an OpenAI key must still never be sent upstream as one.
    token = "sk-service-token-0123456789"
    face = FACES[2]
    client = app_for("simple", AUTH_TOKEN=token).test_client()
    assert_answered(face, face.call(client, {"Authorization": f"Bearer {token}"}))
    assert fake.received[-1].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_openai_face_bearer_challenge(app_for):
    face = FACES[2]
    client = app_for("simple").test_client()
    missing = face.call(client)
    assert_refused(face, missing, "auth_required")
    assert missing.headers["WWW-Authenticate"] == 'Bearer realm="chatservice"'
    wrong = face.call(client, {"Authorization": "Bearer sk-not-the-token"})
    assert_refused(face, wrong, "auth_failed")
    assert wrong.headers["WWW-Authenticate"] == 'Bearer realm="chatservice", error="invalid_token"'
    # Other faces have no standard scheme for Alice ChatGPT's "token" header: no challenge.
    assert "WWW-Authenticate" not in FACES[0].call(client).headers


def test_bearer_is_only_the_openai_face_s_and_only_in_simple_mode(app_for):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    simple = app_for("simple").test_client()
    assert_refused(FACES[0], FACES[0].call(simple, bearer), "auth_required")
    normal = app_for("normal").test_client()
    assert_refused(FACES[2], FACES[2].call(normal, bearer), "auth_required")


def test_openai_model_list_is_covered_too(app_for):
    client = app_for("simple").test_client()
    assert client.get("/api/v1/models").status_code == 401
    assert client.get("/api/v1/models", headers={"token": TOKEN}).status_code == 200


# --- normal -----------------------------------------------------------------------------------


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_normal_mode_refuses_missing_credentials(app_for, face):
    client = app_for("normal").test_client()
    headers = signed()
    assert_refused(face, face.call(client, query="?lang=ru"), "auth_required", "ru")
    assert_refused(face, face.call(client, {"token": headers["token"]}), "auth_required")
    assert_refused(face, face.call(client, {"uuid": headers["uuid"]}), "auth_required")
    # The plain token is simple mode's credential, not normal mode's.
    assert_refused(face, face.call(client, {"token": TOKEN, "uuid": "u-1"}), "auth_failed")


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_normal_mode_accepts_a_fresh_uuid_once(app_for, face):
    client = app_for("normal").test_client()
    headers = signed()
    assert_answered(face, face.call(client, headers))
    assert_refused(face, face.call(client, headers, query="?lang=ru"), "auth_replayed", "ru")
    assert_answered(face, face.call(client, signed()))


@pytest.mark.parametrize("face", FACES, ids=FACE_IDS)
def test_normal_mode_refuses_a_wrong_hash(app_for, face):
    client = app_for("normal").test_client()
    wrong = signed(token=TOKEN + "x")
    assert_refused(face, face.call(client, wrong, query="?lang=zh_CN"), "auth_failed", "zh_CN")


def test_normal_mode_checks_the_hash_of_this_uuid(app_for):
    face = FACES[0]
    client = app_for("normal").test_client()
    other = signed("uuid-b")
    assert_refused(
        face, face.call(client, {"uuid": "uuid-a", "token": other["token"]}), "auth_failed"
    )
    # Upper-case hex is the same hash.
    headers = signed("uuid-c")
    assert_answered(face, face.call(client, {**headers, "token": headers["token"].upper()}))


def test_junk_tokens_do_not_use_up_a_uuid(app_for):
    face = FACES[1]
    client = app_for("normal").test_client()
    headers = signed("seen-with-junk-first")
    for junk in ("0" * 64, "not-a-hash", "é"):
        assert_refused(face, face.call(client, {**headers, "token": junk}), "auth_failed")
    assert_answered(face, face.call(client, headers))
    assert_refused(face, face.call(client, headers), "auth_replayed")


def test_uuid_length_and_characters(app_for):
    face = FACES[0]
    client = app_for("normal").test_client()
    assert_answered(face, face.call(client, signed("u" * 64)))
    too_long = signed("u" * 65)
    assert_refused(face, face.call(client, too_long, query="?lang=ru"), "auth_invalid_uuid", "ru")
    assert "64" in message("auth_invalid_uuid", "ru")
    assert_refused(face, face.call(client, {**signed(), "uuid": ""}), "auth_invalid_uuid")
    assert_refused(face, face.call(client, signed("ключ")), "auth_invalid_uuid")
    # Alice ChatGPT's own example: the milliseconds of the current time as the uuid.
    assert_answered(face, face.call(client, signed("417")))


def test_replay_is_refused_across_apps_sharing_a_store(app_for, tmp_path):
    store = f"sqlite:///{tmp_path}/s.db"
    first = app_for("normal", STORE_URL=store).test_client()
    second = app_for("normal", STORE_URL=store).test_client()
    headers = signed()
    assert_answered(FACES[0], FACES[0].call(first, headers))
    assert_refused(FACES[1], FACES[1].call(second, headers), "auth_replayed")
    fresh = signed()
    assert_answered(FACES[1], FACES[1].call(second, fresh))
    assert_refused(FACES[0], FACES[0].call(first, fresh), "auth_replayed")


@pytest.mark.parametrize("store", ["memory://", "sqlite"])
def test_a_uuid_is_usable_again_after_the_replay_window(app_for, tmp_path, store):
    url = f"sqlite:///{tmp_path}/s.db" if store == "sqlite" else store
    app = app_for("normal", AUTH_REPLAY_WINDOW="60", STORE_URL=url)
    now = [1_700_000_000.0]
    app.extensions["chatservice"].conversation_store.clock = lambda: now[0]
    client, face, headers = app.test_client(), FACES[0], signed()

    assert_answered(face, face.call(client, headers))
    now[0] += 59
    assert_refused(face, face.call(client, headers), "auth_replayed")
    now[0] += 2
    assert_answered(face, face.call(client, headers))
    assert_refused(face, face.call(client, headers), "auth_replayed")


def test_the_default_replay_window_is_a_day(app_for):
    app = app_for("normal")
    assert app.extensions["chatservice"].settings.auth_replay_window == 86400
    now = [1_700_000_000.0]
    app.extensions["chatservice"].conversation_store.clock = lambda: now[0]
    client, face, headers = app.test_client(), FACES[0], signed()
    assert_answered(face, face.call(client, headers))
    now[0] += 86399
    assert_refused(face, face.call(client, headers), "auth_replayed")
    now[0] += 2
    assert_answered(face, face.call(client, headers))


# --- what stays open --------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["none", "simple", "normal"])
def test_healthz_is_open_in_every_mode(app_for, mode):
    response = app_for(mode).test_client().get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_admin_view_keeps_its_own_token(app_for):
    client = app_for("simple", ADMIN_TOKEN="admin-secret-token").test_client()
    response = client.get("/api/admin/keys", headers={"Authorization": "Bearer admin-secret-token"})
    assert response.status_code == 200
    # The client token is not an admin token.
    assert client.get("/api/admin/keys", headers={"token": TOKEN}).status_code == 401


@pytest.mark.parametrize("mode", ["simple", "normal"])
def test_shared_conversations_stay_open(app_for, mode):
    # Alice ChatGPT's GET share/<id> is public: the rest of the conversations face is not.
    client = app_for(mode).test_client()
    creds = (lambda: {"token": TOKEN}) if mode == "simple" else signed
    created = client.post("/api/chatgpt/createTurbo", data="Be terse.", headers=creds())
    assert created.status_code == 200, created.get_data(as_text=True)
    conv_id = created.get_data(as_text=True).strip()
    stored = client.post("/api/chatgpt/store", headers={**creds(), "conversation": conv_id})
    assert stored.status_code == 200, stored.get_data(as_text=True)
    assert client.post("/api/chatgpt/store", headers={"conversation": conv_id}).status_code == 401

    shared = client.get(f"/api/chatgpt/share/{conv_id}")
    assert shared.status_code == 200, shared.get_data(as_text=True)
    assert shared.get_json()["Id"] == conv_id
    # An unknown id is a 404, never a 401.
    assert client.get("/api/chatgpt/share/NoSuchId").status_code == 404


def test_views_marked_auth_exempt_stay_open(app_for):
    app = app_for("simple")
    blueprint = Blueprint("exempt_probe", __name__)
    blueprint.add_url_rule("/probe/open", view_func=auth.exempt(lambda: "open"), endpoint="open")
    blueprint.add_url_rule("/probe/closed", view_func=lambda: "closed", endpoint="closed")
    auth.protect(blueprint)
    app.register_blueprint(blueprint)
    client = app.test_client()
    assert client.get("/probe/open").get_data(as_text=True) == "open"
    assert client.get("/probe/closed").status_code == 401
    assert client.get("/probe/closed", headers={"token": TOKEN}).status_code == 200


def test_cors_preflight_is_not_refused(app_for):
    response = app_for("simple").test_client().options("/api")
    assert response.status_code == 200 and "POST" in response.headers["Allow"]


# --- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["simple", "normal"])
def test_startup_refuses_simple_or_normal_without_a_token(make_app, mode):
    for env in ({"AUTH_MODE": mode}, {"AUTH_MODE": mode, "AUTH_TOKEN": "  "}):
        with pytest.raises(ConfigError) as caught:
            settings_from(env)
        text = str(caught.value)
        assert "AUTH_TOKEN" in text and "\n" not in text
    with pytest.raises(ConfigError, match="AUTH_TOKEN"):
        make_app(AUTH_MODE=mode)


def test_bad_auth_settings_are_refused():
    with pytest.raises(ConfigError, match="AUTH_MODE"):
        settings_from({"AUTH_MODE": "strict", "AUTH_TOKEN": TOKEN})
    with pytest.raises(ConfigError, match="AUTH_REPLAY_WINDOW"):
        settings_from({"AUTH_MODE": "normal", "AUTH_TOKEN": TOKEN, "AUTH_REPLAY_WINDOW": "0"})


def test_settings_never_show_the_token():
    settings = settings_from({"AUTH_MODE": "simple", "AUTH_TOKEN": TOKEN})
    assert TOKEN not in repr(settings) and TOKEN not in str(settings)


# --- logs -------------------------------------------------------------------------------------


def test_no_credential_is_logged(app_for, caplog):
    caplog.set_level(logging.DEBUG)
    simple = app_for("simple").test_client()
    normal = app_for("normal").test_client()
    wrong = "wrong-token-4c1d9e"
    good, junk = signed(), signed(token=TOKEN + "x")
    FACES[0].call(simple, {"token": TOKEN})
    FACES[0].call(simple, {"token": wrong})
    FACES[2].call(simple, {"Authorization": f"Bearer {wrong}"})
    FACES[0].call(normal, good)
    FACES[0].call(normal, good)
    FACES[0].call(normal, junk)

    assert "auth refused (auth_failed)" in caplog.text
    assert "auth refused (auth_replayed)" in caplog.text
    for secret in (TOKEN, wrong, good["token"], good["uuid"], junk["token"]):
        assert secret not in caplog.text


# --- the WebSocket face -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["simple", "normal"])
def test_websocket_handshake_needs_credentials(live_server, mode):
    server = live_server(API_KEY=UPSTREAM_KEY, AUTH_MODE=mode, AUTH_TOKEN=TOKEN)
    url = f"ws://127.0.0.1:{server.port}/api/ws"
    with pytest.raises(simple_websocket.ConnectionError) as refused:
        simple_websocket.Client.connect(url)
    assert refused.value.status_code == 401

    headers = {"token": TOKEN} if mode == "simple" else signed()
    ws = simple_websocket.Client.connect(url, headers=headers)
    try:
        ws.send(json.dumps({"seq": "a-1", "data": {"query": "hi"}}))
        frames = []
        while not frames or frames[-1]["data"]["finish_reason"] is None:
            raw = ws.receive(timeout=10)
            assert raw is not None, "no frame within the timeout"
            frames.append(json.loads(raw))
        assert "".join(frame["data"]["contents"] for frame in frames) == "echo: hi"
    finally:
        ws.close()
    if mode == "normal":
        with pytest.raises(simple_websocket.ConnectionError) as replayed:
            simple_websocket.Client.connect(url, headers=headers)
        assert replayed.value.status_code == 401
    log = server.log_text()
    assert TOKEN not in log and headers["token"] not in log
