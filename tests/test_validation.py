"""Request validation on both chat faces, HTTP-level errors, and the ROUTE setting."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
LANGS = ("en", "zh_CN", "zh_TW", "ru")
API_KEY = "sk-test-validation-0001"


def _load(lang: str) -> dict[str, str]:
    with open(ROOT / "i18n" / f"{lang}.json", encoding="utf-8") as fh:
        return json.load(fh)


CATALOGS = {lang: _load(lang) for lang in LANGS}


class Case:
    """One invalid body: raw ``data`` or a ``json`` value, and the error it must give."""

    def __init__(self, id_: str, body: Any, key: str, raw: bool = False, **params: Any) -> None:
        self.id = id_
        self.body = body
        self.raw = raw
        self.key = key
        self.params = params

    def post(self, client, path: str, lang: str):
        url = f"{path}?lang={lang}"
        if self.raw:
            return client.post(url, data=self.body, content_type="application/json")
        return client.post(url, json=self.body)


def out_of_range(field: str, lo: int, hi: int) -> dict[str, Any]:
    return {"field": field, "min": lo, "max": hi}


API_OK = {"user_content": "hi"}
API_CASES = [
    Case("invalid-json", '{"user_content": "hi",', "invalid_json", raw=True),
    Case("empty-body", "", "invalid_json", raw=True),
    Case("not-utf8", b'{"user_content": "\xff\xfe"}', "invalid_json", raw=True),
    Case("json-array", ["user_content", "hi"], "body_not_object"),
    Case("json-string", "hi", "body_not_object"),
    Case("json-null", "null", "body_not_object", raw=True),
    Case("missing-user-content", {"model": "gpt-3.5-turbo"}, "missing_field", field="user_content"),
    Case("null-user-content", {"user_content": None}, "missing_field", field="user_content"),
    Case("empty-user-content", {"user_content": ""}, "empty_field", field="user_content"),
    Case("blank-user-content", {"user_content": " \n\t"}, "empty_field", field="user_content"),
    Case("user-content-number", {"user_content": 5}, "not_a_string", field="user_content"),
    Case("user-content-list", {"user_content": ["hi"]}, "not_a_string", field="user_content"),
    Case(
        "max-tokens-0",
        {**API_OK, "max_tokens": 0},
        "out_of_range",
        **out_of_range("max_tokens", 1, 4096),
    ),
    Case(
        "max-tokens-4097",
        {**API_OK, "max_tokens": 4097},
        "out_of_range",
        **out_of_range("max_tokens", 1, 4096),
    ),
    Case(
        "max-tokens-negative",
        {**API_OK, "max_tokens": -1},
        "out_of_range",
        **out_of_range("max_tokens", 1, 4096),
    ),
    Case("max-tokens-string", {**API_OK, "max_tokens": "10"}, "not_an_integer", field="max_tokens"),
    Case("max-tokens-true", {**API_OK, "max_tokens": True}, "not_an_integer", field="max_tokens"),
    Case("max-tokens-1.5", {**API_OK, "max_tokens": 1.5}, "not_an_integer", field="max_tokens"),
    Case(
        "system-content-number",
        {**API_OK, "system_content": 1},
        "not_a_string",
        field="system_content",
    ),
    Case("sys-content-number", {**API_OK, "sys_content": 1}, "not_a_string", field="sys_content"),
    Case(
        "continuous-dialogue-string",
        {**API_OK, "continuous_dialogue": "hello"},
        "not_a_list",
        field="continuous_dialogue",
    ),
    Case(
        "continuous-object",
        {**API_OK, "continuous": {"role": "user", "content": "x"}},
        "not_a_list",
        field="continuous",
    ),
    Case(
        "continuous-role-robot",
        {**API_OK, "continuous_dialogue": [{"role": "robot", "content": "beep"}]},
        "invalid_role",
        field="continuous_dialogue",
        index=0,
    ),
    Case(
        "continuous-no-content",
        {
            **API_OK,
            "continuous": [{"role": "user", "content": "a"}, {"role": "assistant"}],
        },
        "invalid_message",
        field="continuous",
        index=1,
    ),
    Case("model-empty", {**API_OK, "model": ""}, "empty_field", field="model"),
    Case("model-number", {**API_OK, "model": 4}, "not_a_string", field="model"),
    Case("api-key-number", {**API_OK, "api_key": 123}, "not_a_string", field="api_key"),
    Case("stream-string", {**API_OK, "stream": "yes"}, "not_a_boolean", field="stream"),
    Case("stream-number", {**API_OK, "stream": 1}, "not_a_boolean", field="stream"),
]

CHAT_OK = {"query": "hi"}
CHAT_CASES = [
    Case("invalid-json", '{"query": ', "invalid_json", raw=True),
    Case("empty-body", "", "invalid_json", raw=True),
    Case("json-array", [{"query": "hi"}], "body_not_object"),
    Case("query-and-messages-missing", {"model": "gpt-3.5-turbo"}, "query_or_messages"),
    Case("empty-object", {}, "query_or_messages"),
    Case("messages-empty-no-query", {"messages": []}, "query_or_messages"),
    Case("query-number", {"query": 5}, "not_a_string", field="query"),
    Case("messages-string", {"messages": "hello"}, "not_a_list", field="messages"),
    Case(
        "messages-object",
        {"messages": {"role": "user", "content": "hi"}},
        "not_a_list",
        field="messages",
    ),
    Case(
        "role-robot",
        {"messages": [{"role": "robot", "content": "beep"}]},
        "invalid_role",
        field="messages",
        index=0,
    ),
    Case(
        "role-missing",
        {"messages": [{"content": "beep"}]},
        "invalid_role",
        field="messages",
        index=0,
    ),
    Case(
        "message-without-content",
        {"messages": [{"role": "user", "content": "a"}, {"role": "user"}]},
        "invalid_message",
        field="messages",
        index=1,
    ),
    Case(
        "message-content-number",
        {"messages": [{"role": "user", "content": 7}]},
        "invalid_message",
        field="messages",
        index=0,
    ),
    Case(
        "message-not-object",
        {"query": "hi", "messages": ["hello"]},
        "invalid_message",
        field="messages",
        index=0,
    ),
    Case("model-empty", {**CHAT_OK, "model": ""}, "empty_field", field="model"),
    Case(
        "openai-parameter-string",
        {**CHAT_OK, "openai_parameter": "yes"},
        "not_a_boolean",
        field="openai_parameter",
    ),
    Case(
        "max-tokens-0",
        {**CHAT_OK, "max_tokens": 0},
        "out_of_range",
        **out_of_range("max_tokens", 1, 4096),
    ),
    Case(
        "max-tokens-4097",
        {**CHAT_OK, "max_tokens": 4097},
        "out_of_range",
        **out_of_range("max_tokens", 1, 4096),
    ),
    Case(
        "max-tokens-string", {**CHAT_OK, "max_tokens": "10"}, "not_an_integer", field="max_tokens"
    ),
    Case("max-tokens-true", {**CHAT_OK, "max_tokens": True}, "not_an_integer", field="max_tokens"),
    Case("max-tokens-1.5", {**CHAT_OK, "max_tokens": 1.5}, "not_an_integer", field="max_tokens"),
    Case(
        "temperature-2.5",
        {**CHAT_OK, "temperature": 2.5},
        "out_of_range",
        **out_of_range("temperature", 0, 2),
    ),
    Case(
        "temperature-negative",
        {**CHAT_OK, "temperature": -0.1},
        "out_of_range",
        **out_of_range("temperature", 0, 2),
    ),
    Case(
        "temperature-nan",
        '{"query": "hi", "temperature": NaN}',
        "not_finite",
        raw=True,
        field="temperature",
    ),
    Case(
        "temperature-string",
        {**CHAT_OK, "temperature": "0.5"},
        "not_a_number",
        field="temperature",
    ),
    Case(
        "temperature-true",
        {**CHAT_OK, "temperature": True},
        "not_a_number",
        field="temperature",
    ),
    Case("top-p-1.5", {**CHAT_OK, "top_p": 1.5}, "out_of_range", **out_of_range("top_p", 0, 1)),
    Case(
        "frequency-penalty-3",
        {**CHAT_OK, "frequency_penalty": 3},
        "out_of_range",
        **out_of_range("frequency_penalty", -2, 2),
    ),
    Case(
        "frequency-penalty-minus-3",
        {**CHAT_OK, "frequency_penalty": -3},
        "out_of_range",
        **out_of_range("frequency_penalty", -2, 2),
    ),
    Case(
        "presence-penalty-3",
        {**CHAT_OK, "presence_penalty": 3},
        "out_of_range",
        **out_of_range("presence_penalty", -2, 2),
    ),
    Case(
        "presence-penalty-minus-3",
        {**CHAT_OK, "presence_penalty": -3},
        "out_of_range",
        **out_of_range("presence_penalty", -2, 2),
    ),
    Case("best-of-0", {**CHAT_OK, "best_of": 0}, "out_of_range", **out_of_range("best_of", 1, 20)),
    Case(
        "best-of-21",
        {**CHAT_OK, "best_of": 21},
        "out_of_range",
        **out_of_range("best_of", 1, 20),
    ),
    Case(
        "stop-five-strings",
        {**CHAT_OK, "stop": ["a", "b", "c", "d", "e"]},
        "invalid_stop",
        field="stop",
        max=4,
    ),
    Case("stop-number", {**CHAT_OK, "stop": 5}, "invalid_stop", field="stop", max=4),
    Case("stop-list-of-numbers", {**CHAT_OK, "stop": [1]}, "invalid_stop", field="stop", max=4),
    Case("stream-string", {**CHAT_OK, "stream": "yes"}, "not_a_boolean", field="stream"),
]


@pytest.fixture
def app_client(make_app):
    return make_app(API_KEY=API_KEY).test_client()


def expected_message(case: Case, lang: str) -> str:
    return CATALOGS[lang][case.key].format(**case.params)


def assert_names_field_and_range(case: Case, message: str) -> None:
    """The message shows the field and, for a range error, both bounds."""
    if "field" in case.params:
        assert case.params["field"] in message
    for bound in ("min", "max"):
        if bound in case.params:
            assert str(case.params[bound]) in message
    if "index" in case.params:
        assert str(case.params["index"]) in message


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("case", API_CASES, ids=[case.id for case in API_CASES])
def test_api_face_rejects(app_client, fake, case, lang):
    response = case.post(app_client, "/api", lang)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    message = expected_message(case, lang)
    assert response.get_json() == {
        "code": 400,
        "msg": "failed",
        "data": {"response": message, "error": case.key},
    }
    assert_names_field_and_range(case, message)
    assert fake.received == []


@pytest.mark.parametrize("lang", LANGS)
@pytest.mark.parametrize("case", CHAT_CASES, ids=[case.id for case in CHAT_CASES])
def test_chat_face_rejects(app_client, fake, case, lang):
    response = case.post(app_client, "/api/v1/chat", lang)
    assert response.status_code == 400, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    message = expected_message(case, lang)
    assert response.get_json() == {"code": 400, "msg": message, "data": {"error": case.key}}
    assert_names_field_and_range(case, message)
    assert fake.received == []


def test_english_range_message_reads_naturally(app_client):
    response = app_client.post("/api/v1/chat", json={"query": "hi", "frequency_penalty": 3})
    assert response.get_json()["msg"] == "The field 'frequency_penalty' must be between -2 and 2."
    response = app_client.post("/api", json={"user_content": "hi", "max_tokens": 0})
    assert (
        response.get_json()["data"]["response"]
        == "The field 'max_tokens' must be between 1 and 4096."
    )


# --- values on the edge of a range are accepted -------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 1},
        {"max_tokens": 4096},
        {"max_tokens": 10.0},
        {"max_tokens": None},
        {"stream": False},
        {"system_content": "be brief", "continuous": [{"role": "user", "content": "a"}]},
        {"sys_content": "be brief"},
        {"api_key": "sk-per-request"},
    ],
)
def test_api_face_accepts_edge_values(app_client, fake, extra):
    response = app_client.post("/api", json={"user_content": "hi", **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["current_response"] == "echo: hi"
    assert len(fake.received) == 1


@pytest.mark.parametrize(
    "extra",
    [
        {"temperature": 0, "top_p": 0},
        {"temperature": 2, "top_p": 1},
        {"frequency_penalty": -2, "presence_penalty": 2},
        {"best_of": 1},
        {"best_of": 20},
        {"max_tokens": 1},
        {"max_tokens": 4096},
        {"stop": "x"},
        {"stop": ["a", "b", "c", "d"]},
        {"stop": []},
        {"openai_parameter": False, "temperature": 1.5},
        {"openai_parameter": True},
    ],
)
def test_chat_face_accepts_edge_values(app_client, fake, extra):
    response = app_client.post("/api/v1/chat", json={"query": "hi", **extra})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["data"]["response"] == "echo: hi"
    assert len(fake.received) == 1


def test_chat_face_accepts_messages_without_query(app_client, fake):
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "from list"}]
    response = app_client.post("/api/v1/chat", json={"messages": messages})
    assert response.status_code == 200
    assert response.get_json()["data"]["response"] == "echo: from list"


# --- HTTP-level errors --------------------------------------------------------------------------


@pytest.mark.parametrize("lang", LANGS)
def test_body_over_max_body_bytes_is_413_in_the_api_envelope(make_app, fake, lang):
    client = make_app(API_KEY=API_KEY, MAX_BODY_BYTES="1000").test_client()
    body = json.dumps({"user_content": "x" * 2000})
    response = client.post(f"/api?lang={lang}", data=body, content_type="application/json")
    assert response.status_code == 413
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "code": 413,
        "msg": "failed",
        "data": {
            "response": CATALOGS[lang]["payload_too_large"].format(limit=1000),
            "error": "payload_too_large",
        },
    }
    assert fake.received == []


def test_body_over_max_body_bytes_on_the_chat_face(make_app, fake):
    client = make_app(API_KEY=API_KEY, MAX_BODY_BYTES="1000").test_client()
    response = client.post("/api/v1/chat", json={"query": "x" * 2000})
    assert response.status_code == 413
    assert response.get_json() == {
        "code": 413,
        "msg": "The request body is larger than 1000 bytes.",
        "data": {"error": "payload_too_large"},
    }
    assert fake.received == []


def test_body_just_under_max_body_bytes_is_accepted(make_app, fake):
    client = make_app(API_KEY=API_KEY, MAX_BODY_BYTES="1000").test_client()
    body = json.dumps({"user_content": "x" * 900})
    assert len(body) <= 1000
    response = client.post("/api", data=body, content_type="application/json")
    assert response.status_code == 200
    assert len(fake.received) == 1


def test_get_on_the_api_face_is_405_json(app_client):
    response = app_client.get("/api")
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "code": 405,
        "msg": "failed",
        "data": {
            "response": "The method GET is not allowed on this path.",
            "error": "method_not_allowed",
        },
    }


def test_get_on_the_chat_face_is_405_in_its_envelope(app_client):
    response = app_client.get("/api/v1/chat?lang=ru")
    assert response.status_code == 405
    assert response.mimetype == "application/json"
    assert response.get_json() == {
        "code": 405,
        "msg": CATALOGS["ru"]["method_not_allowed"].format(method="GET"),
        "data": {"error": "method_not_allowed"},
    }


@pytest.mark.parametrize("path", ["/no/such/path", "/api/nothing", "/api/chatroom-typo"])
def test_unknown_path_is_404_json(app_client, path):
    response = app_client.get(path)
    assert response.status_code == 404
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.get_json()
    assert body["code"] == 404
    assert body["data"]["error"] == "not_found"
    assert "<html" not in response.get_data(as_text=True).lower()


def test_unknown_path_404_in_the_api_envelope(app_client):
    response = app_client.post("/no/such/path", json={"user_content": "hi"})
    assert response.status_code == 404
    assert response.get_json() == {
        "code": 404,
        "msg": "failed",
        "data": {"response": CATALOGS["en"]["not_found"], "error": "not_found"},
    }


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None],
)
def test_json_body_with_another_content_type_is_accepted(app_client, fake, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = app_client.post("/api", data='{"user_content": "curl"}', headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["current_response"] == "echo: curl"
    response = app_client.post("/api/v1/chat", data='{"query": "curl"}', headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["data"]["response"] == "echo: curl"


# --- ROUTE --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "api_path", "chat_path"),
    [
        ("api", "/api", "/api/v1/chat"),
        ("", "/", "/v1/chat"),
        ("v2/chat", "/v2/chat", "/v2/chat/v1/chat"),
        ("/api/", "/api", "/api/v1/chat"),
        ("/v2/chat/", "/v2/chat", "/v2/chat/v1/chat"),
    ],
)
def test_route_setting_places_both_faces(make_app, fake, route, api_path, chat_path):
    client = make_app(API_KEY=API_KEY, ROUTE=route).test_client()
    api_paths = {api_path, api_path.rstrip("/") + "/"}
    for path in sorted(api_paths):
        response = client.post(path, json={"user_content": f"to {path}"})
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        assert response.get_json()["current_response"] == f"echo: to {path}"
    for path in (chat_path, chat_path + "/"):
        response = client.post(path, json={"query": f"to {path}"})
        assert response.status_code == 200, (path, response.get_data(as_text=True))
        assert response.get_json()["data"]["response"] == f"echo: to {path}"
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert len(fake.received) == len(api_paths) + 2
    # Validation errors use each face's own envelope at its ROUTE path too.
    response = client.post(chat_path, json={})
    assert response.get_json()["data"]["error"] == "query_or_messages"
    assert response.get_json()["msg"] == CATALOGS["en"]["query_or_messages"]
    response = client.post(api_path, json={})
    assert response.get_json()["msg"] == "failed"
    assert response.get_json()["data"]["error"] == "missing_field"


def test_faces_are_not_at_api_when_route_is_elsewhere(make_app, fake):
    client = make_app(API_KEY=API_KEY, ROUTE="v2/chat").test_client()
    assert client.post("/api", json={"user_content": "hi"}).status_code == 404
    assert client.post("/api/v1/chat", json={"query": "hi"}).status_code == 404
    assert fake.received == []


@pytest.mark.parametrize("field", ["temperature", "top_p", "frequency_penalty"])
def test_huge_integer_in_a_number_field_is_out_of_range(app_client, fake, field):
    body = '{"query": "hi", "%s": 1%s}' % (field, "0" * 400)  # noqa: UP031
    response = app_client.post("/api/v1/chat", data=body, content_type="application/json")
    assert response.status_code == 400
    assert response.get_json()["data"]["error"] == "out_of_range"
    assert fake.received == []


def test_unknown_path_under_v1_is_404_in_openai_shape(app_client):
    # /api/v1/... belongs to the OpenAI-compatible face: its clients parse OpenAI errors.
    response = app_client.get("/api/v1/chat/more")
    assert response.status_code == 404
    error = response.get_json()["error"]
    assert error["code"] == "not_found" and error["message"] == CATALOGS["en"]["not_found"]
