"""The OpenAI-compatible face (``/{ROUTE}/v1``): the official ``openai`` SDK against real
gunicorn servers, and Flask's test client for the exact bodies, streams and errors.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import pytest
import requests

from chatservice.errors import ServiceError
from chatservice.routes.openai_api import error_type
from tests.conftest import free_port
from tests.fakeupstream import Reply

ROOT = Path(__file__).resolve().parent.parent
CATALOGS = {
    lang: json.loads((ROOT / "i18n" / f"{lang}.json").read_text(encoding="utf-8"))
    for lang in ("en", "ru", "zh_TW")
}
LOCAL_ID = "smollm2-135m-instruct"
HELLO = [{"role": "user", "content": "Hello"}]
CONFIGURED_KEY = "sk-test-configured-0001"


@pytest.fixture
def sdk(live_server) -> Iterator[Callable[..., openai.OpenAI]]:
    """Make official clients for a live server's face; no SDK retries, so errors show at once.

    Clients are closed before the servers stop: an idle keep-alive connection would hold
    gunicorn's graceful shutdown for seconds.
    """
    clients: list[openai.OpenAI] = []

    def make(server: Any, api_key: str = "sk-test", **options: Any) -> openai.OpenAI:
        client = openai.OpenAI(
            base_url=server.url + "/api/v1", api_key=api_key, max_retries=0, timeout=60, **options
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def sse_events(response: Any) -> list[Any]:
    """The ``data`` of every event of a test-client stream, JSON-decoded except ``[DONE]``."""
    events = []
    for block in response.get_data(as_text=True).split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


# --- a second upstream for what the shared fake does not do -------------------------------------


class ExtrasUpstream:
    """A tiny OpenAI-compatible upstream on 127.0.0.1 that lists models (``GET /v1/models``,
    status and body settable) and streams chat answers ending, when the request asks
    ``stream_options.include_usage``, with OpenAI's usage-only chunk (``"choices": []``).
    The shared fake answers ``/models`` with an empty list and never sends a usage chunk.
    """

    MODELS = [
        {"id": "gpt-4o", "object": "model", "created": 1715367049, "owned_by": "system"},
        {"id": "org/llama-3", "object": "model", "created": 1700000000, "owned_by": "org"},
    ]

    def __init__(self) -> None:
        self.received: list[tuple[str, str, dict[str, str], Any]] = []
        self.reset()
        handler = type("Handler", (_ExtrasHandler,), {"upstream": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def reset(self) -> None:
        self.received.clear()
        self.models_status = 200
        self.models_body: Any = {"object": "list", "data": self.MODELS}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _ExtrasHandler(BaseHTTPRequestHandler):
    upstream: ExtrasUpstream

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    def do_GET(self) -> None:
        self.upstream.received.append(("GET", self.path, dict(self.headers.items()), None))
        body = json.dumps(self.upstream.models_body).encode()
        self.send_response(self.upstream.models_status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.upstream.received.append(("POST", self.path, dict(self.headers.items()), body))
        base = {"id": "x-1", "object": "chat.completion.chunk", "model": body["model"]}
        chunks = [
            {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]},
            {**base, "choices": [{"index": 0, "delta": {"content": "hi"}}]},
            {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        ]
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
            chunks.append({**base, "choices": [], "usage": usage})
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()  # HTTP/1.0: the stream ends when the connection closes
        for chunk in chunks:
            self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
        self.wfile.write(b"data: [DONE]\n\n")


@pytest.fixture(scope="module")
def extras_server() -> Iterator[ExtrasUpstream]:
    server = ExtrasUpstream()
    yield server
    server.close()


@pytest.fixture
def extras(extras_server: ExtrasUpstream) -> ExtrasUpstream:
    extras_server.reset()
    return extras_server


# --- the official SDK against a real server, answers from the fake upstream ---------------------


def test_sdk_chat_completion(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    completion = sdk(server).chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.choices[0].message.content == "echo: Hello"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini"
    assert completion.usage is not None and completion.usage.total_tokens == 7
    sent = fake.received[-1]
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["Authorization"] == "Bearer sk-test"
    assert sent.json == {"model": "gpt-4o-mini", "messages": HELLO}


def test_sdk_streamed_chat_forwards_stream_options(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    stream = sdk(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": "Hello there"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    # The last chunk is the usage the client asked for: no choices.
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: Hello there" and chunks[-1].usage is not None
    assert chunks[-2].choices[0].finish_reason == "stop"
    sent = fake.received[-1].json
    assert sent["stream"] is True
    assert sent["stream_options"] == {"include_usage": True}


def test_sdk_completions(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    completion = sdk(server).completions.create(
        model="gpt-3.5-turbo-instruct", prompt="Say hi", max_tokens=5
    )
    assert completion.choices[0].text == "echo: Say hi"
    sent = fake.received[-1]
    assert sent.path == "/v1/completions"
    assert sent.json == {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 5}


def test_sdk_unknown_and_sampling_fields_are_forwarded(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    sdk(server).chat.completions.create(
        model="gpt-4o-mini",
        messages=HELLO,
        temperature=0.5,
        max_completion_tokens=7,
        user="u-1",
        extra_body={"foo": 1, "nested": {"a": [1, 2]}},
    )
    sent = fake.received[-1].json
    assert sent["foo"] == 1 and sent["nested"] == {"a": [1, 2]}
    assert sent["temperature"] == 0.5
    assert sent["max_completion_tokens"] == 7 and "max_tokens" not in sent
    assert sent["user"] == "u-1"


def test_sdk_lists_and_retrieves_models(sdk, live_server, extras):
    server = live_server(UPSTREAM_BASE_URL=extras.url)
    client = sdk(server)
    models = client.models.list().data
    assert [model.id for model in models] == [LOCAL_ID, "gpt-4o", "org/llama-3"]
    assert models[0].owned_by == "chatservice" and models[0].object == "model"
    assert isinstance(models[0].created, int)
    assert extras.received[-1][:2] == ("GET", "/v1/models")
    assert extras.received[-1][2]["Authorization"] == "Bearer sk-test"

    assert client.models.retrieve(LOCAL_ID).owned_by == "chatservice"
    assert client.models.retrieve("gpt-4o").created == 1715367049
    assert client.models.retrieve("org/llama-3").owned_by == "org"
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such-model")
    assert caught.value.code == "model_not_found"
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "model"
    assert caught.value.body["message"] == CATALOGS["en"]["model_not_found"].format(
        model="no-such-model"
    )


def test_sdk_models_without_an_upstream_key_list_only_the_embedded_model(sdk, live_server, extras):
    server = live_server(UPSTREAM_BASE_URL=extras.url)
    client = sdk(server, api_key="none")
    assert [model.id for model in client.models.list().data] == [LOCAL_ID]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4o")
    assert extras.received == []


def test_sdk_upstream_errors_raise_the_matching_exceptions(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    client = sdk(server)
    leaked = "Incorrect API key provided: sk-tes*******"
    cases = [
        (401, {"code": "invalid_api_key"}, openai.AuthenticationError, 401,
         "upstream_unauthorized", "authentication_error"),
        (429, {"code": "rate_limit_exceeded"}, openai.RateLimitError, 429,
         "upstream_rate_limited", "rate_limit_error"),
        (429, {"code": "insufficient_quota"}, openai.RateLimitError, 429,
         "upstream_quota", "insufficient_quota"),
        (500, {"type": "server_error"}, openai.InternalServerError, 502,
         "upstream_error", "api_error"),
        (400, {"code": "context_length_exceeded"}, openai.BadRequestError, 400,
         "context_length_exceeded", "invalid_request_error"),
        (404, {"code": "model_not_found"}, openai.NotFoundError, 404,
         "model_not_found", "invalid_request_error"),
    ]  # fmt: skip
    for status, error, exception, our_status, code, kind in cases:
        fake.push(Reply(status=status, body={"error": {"message": leaked, **error}}))
        with pytest.raises(exception) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
        err = caught.value
        assert isinstance(err, openai.APIStatusError)
        param = "model" if code == "model_not_found" else None
        assert (err.status_code, err.code, err.type, err.param) == (our_status, code, kind, param)
        # The leaked text has no token counts to read: they show as "?".
        assert err.body["message"] == CATALOGS["en"][code].format(
            status_code=status, limit="?", tokens="?", model="gpt-4o-mini"
        )
        assert leaked not in err.response.text
        fake.reset()


def test_sdk_bad_request_is_a_localized_400_that_never_reaches_upstream(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    expected = {
        lang: CATALOGS[lang]["not_a_positive_integer"].format(field="max_tokens")
        for lang in CATALOGS
    }
    for client, lang in [
        (sdk(server), "en"),
        (sdk(server, default_query={"lang": "ru"}), "ru"),
        (sdk(server, default_headers={"Accept-Language": "zh-TW"}), "zh_TW"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=0)
        assert caught.value.code == "not_a_positive_integer"
        assert caught.value.param == "max_tokens"
        assert caught.value.type == "invalid_request_error"
        assert caught.value.body["message"] == expected[lang]
    assert fake.received == []


def test_sdk_stream_broken_midway_raises_an_api_error(sdk, live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    fake.push(Reply(drop_after=1))
    stream = sdk(server, default_query={"lang": "ru"}).chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "one two three"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "echo:"
    assert caught.value.code == "upstream_interrupted"
    assert caught.value.type == "api_error"
    assert caught.value.message == CATALOGS["ru"]["upstream_interrupted"]


def test_no_upstream_url_or_headers_leak(live_server, fake):
    server = live_server(UPSTREAM_RETRIES="0")
    url = server.url + "/api/v1/chat/completions"
    fake.push(Reply(headers={"X-Upstream-Secret": "s3cret", "Openai-Organization": "org-x"}))
    # Connection: close, so no idle keep-alive connection delays the server's shutdown.
    auth = {"Authorization": "Bearer sk-test", "Connection": "close"}
    whole = requests.post(url, json={"messages": HELLO}, headers=auth, timeout=30)
    streamed = requests.post(
        url, json={"messages": HELLO, "stream": True}, headers=auth, timeout=30
    )
    fake.push(Reply(status=500, body={"error": {"message": f"boom at {fake.url}"}}))
    failed = requests.post(url, json={"messages": HELLO}, headers=auth, timeout=30)
    assert [r.status_code for r in (whole, streamed, failed)] == [200, 200, 502]
    for response in (whole, streamed, failed):
        headers = {name.lower(): value for name, value in response.headers.items()}
        assert "x-upstream-secret" not in headers and "openai-organization" not in headers
        assert "BaseHTTP" not in headers.get("server", "")
        assert "127.0.0.1" not in response.text and fake.url not in response.text
    assert streamed.headers["Content-Type"].startswith("text/event-stream")
    assert len(fake.received) == 3


# --- the official SDK against the embedded model ------------------------------------------------


def test_sdk_embedded_model_plain_and_streamed(sdk, live_server, fake):
    server = live_server(BACKEND="local")
    client = sdk(server)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    completion = client.chat.completions.create(model=LOCAL_ID, messages=messages, max_tokens=16)
    assert completion.model == LOCAL_ID
    assert completion.choices[0].message.content.strip()
    assert completion.usage is not None and 0 < completion.usage.completion_tokens <= 16

    chunks = list(
        client.chat.completions.create(
            model=LOCAL_ID, messages=messages, max_tokens=16, stream=True
        )
    )
    assert all(chunk.model == LOCAL_ID for chunk in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks).strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")

    text = client.completions.create(model=LOCAL_ID, prompt="The sky is", max_tokens=8)
    assert text.choices[0].text.strip()
    assert fake.received == []


def test_sdk_placeholder_key_gets_the_embedded_model_when_no_key_is_configured(
    sdk, live_server, fake
):
    server = live_server()
    completion = sdk(server, api_key="x").chat.completions.create(
        model="gpt-3.5-turbo", messages=HELLO, max_tokens=8
    )
    assert completion.model == LOCAL_ID
    assert completion.choices[0].message.content.strip()
    assert fake.received == []


# --- bodies, streams and errors in detail (Flask test client) -----------------------------------


def test_non_streamed_answer_is_the_upstream_body_unchanged(client, fake):
    response = client.post("/api/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 200
    assert response.get_json() == {
        "id": "fake-1",
        "object": "chat.completion",
        "model": "gpt-3.5-turbo",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "echo: Hello"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    assert fake.received[-1].json["model"] == "gpt-3.5-turbo"  # DEFAULT_MODEL


def test_stream_relays_every_upstream_chunk_then_done(client, fake):
    response = client.post("/api/v1/chat/completions", json={"messages": HELLO, "stream": True})
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    choices = [event["choices"][0] for event in events[:-1]]
    # The role-only first chunk and the empty-delta last one are relayed too.
    assert [choice["delta"] for choice in choices] == [
        {"role": "assistant", "content": ""},
        {"content": "echo:"},
        {"content": " Hello"},
        {},
    ]
    assert [choice["finish_reason"] for choice in choices] == [None, None, None, "stop"]
    assert all(event["object"] == "chat.completion.chunk" for event in events[:-1])


def test_usage_only_chunk_is_relayed(make_app, extras):
    client = make_app(API_KEY=CONFIGURED_KEY, UPSTREAM_BASE_URL=extras.url).test_client()
    body = {"messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}
    events = sse_events(client.post("/api/v1/chat/completions", json=body))
    assert events[-1] == "[DONE]"
    assert events[-2]["choices"] == []
    assert events[-2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
    assert [e["choices"][0]["delta"] for e in events[:3]] == [
        {"role": "assistant"},
        {"content": "hi"},
        {},
    ]
    assert extras.received[-1][3]["stream_options"] == {"include_usage": True}


def test_streamed_completion_relays_text_chunks(client, fake):
    response = client.post(
        "/api/v1/completions", json={"prompt": "a b", "stream": True, "model": "davinci-002"}
    )
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    assert "".join(event["choices"][0]["text"] for event in events[:-1]) == "echo: a b"
    assert fake.received[-1].path == "/v1/completions"


def test_content_parts_null_content_and_other_roles_are_forwarded(client, fake):
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Hi"}]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
            ],
        },
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
    ]
    response = client.post("/api/v1/chat/completions", json={"messages": messages})
    assert response.status_code == 200
    assert fake.received[-1].json["messages"] == messages


def test_list_prompt_is_forwarded(client, fake):
    response = client.post("/api/v1/completions", json={"prompt": ["one", "two"]})
    assert response.status_code == 200
    assert fake.received[-1].json["prompt"] == ["one", "two"]


@pytest.mark.parametrize(
    ("authorization", "sent"),
    [
        ("Bearer sk-client-0002", "Bearer sk-client-0002"),
        ("bearer sk-client-0002", "Bearer sk-client-0002"),
        ("Bearer x", f"Bearer {CONFIGURED_KEY}"),
        ("Bearer none", f"Bearer {CONFIGURED_KEY}"),
        ("Basic sk-client-0002", f"Bearer {CONFIGURED_KEY}"),
        (None, f"Bearer {CONFIGURED_KEY}"),
    ],
)
def test_only_sk_bearer_tokens_are_used_as_the_upstream_key(client, fake, authorization, sent):
    headers = {"Authorization": authorization} if authorization else {}
    response = client.post("/api/v1/chat/completions", json={"messages": HELLO}, headers=headers)
    assert response.status_code == 200
    assert fake.received[-1].headers["Authorization"] == sent


BAD_REQUESTS = [
    ("chat/completions", b"{not json", "invalid_json", None),
    ("chat/completions", [HELLO], "body_not_object", None),
    ("chat/completions", {}, "missing_field", "messages"),
    ("chat/completions", {"messages": None}, "missing_field", "messages"),
    ("chat/completions", {"messages": "Hello"}, "not_a_list", "messages"),
    ("chat/completions", {"messages": []}, "empty_field", "messages"),
    ("chat/completions", {"messages": ["Hello"]}, "invalid_chat_message", "messages"),
    ("chat/completions", {"messages": [{"content": "Hi"}]}, "invalid_chat_message", "messages"),
    ("chat/completions", {"messages": HELLO, "model": 4}, "not_a_string", "model"),
    ("chat/completions", {"messages": HELLO, "model": " "}, "empty_field", "model"),
    ("chat/completions", {"messages": HELLO, "stream": "yes"}, "not_a_boolean", "stream"),
    ("chat/completions", {"messages": HELLO, "max_tokens": 0}, "not_a_positive_integer",
     "max_tokens"),
    ("chat/completions", {"messages": HELLO, "max_tokens": "5"}, "not_a_positive_integer",
     "max_tokens"),
    ("chat/completions", {"messages": HELLO, "max_tokens": True}, "not_a_positive_integer",
     "max_tokens"),
    ("chat/completions", {"messages": HELLO, "max_tokens": 2.5}, "not_a_positive_integer",
     "max_tokens"),
    ("chat/completions", {"messages": HELLO, "max_completion_tokens": -1},
     "not_a_positive_integer", "max_completion_tokens"),
    ("completions", {}, "missing_field", "prompt"),
    ("completions", {"prompt": 5}, "invalid_prompt", "prompt"),
    ("completions", {"prompt": {"text": "hi"}}, "invalid_prompt", "prompt"),
    ("completions", {"prompt": "hi", "max_tokens": -3}, "not_a_positive_integer", "max_tokens"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "code", "param"), BAD_REQUESTS)
def test_bad_requests_are_openai_shaped_400s(client, fake, path, body, code, param):
    if isinstance(body, bytes):
        response = client.post(f"/api/v1/{path}", data=body, content_type="application/json")
    else:
        response = client.post(f"/api/v1/{path}", json=body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        code,
        param,
        "invalid_request_error",
    )
    assert error["message"] == CATALOGS["en"][code].format(field=param, index=0)
    assert fake.received == []


def test_errors_outside_views_are_openai_shaped(make_app):
    client = make_app(API_KEY=CONFIGURED_KEY, MAX_BODY_BYTES="200").test_client()
    en = CATALOGS["en"]
    cases = [
        (client.get("/api/v1/no-such-path"), 404, "not_found", en["not_found"]),
        (
            client.get("/api/v1/chat/completions"),
            405,
            "method_not_allowed",
            en["method_not_allowed"].format(method="GET"),
        ),
        (
            client.post("/api/v1/models"),
            405,
            "method_not_allowed",
            en["method_not_allowed"].format(method="POST"),
        ),
        (
            client.post("/api/v1/chat/completions", json={"messages": HELLO, "pad": "x" * 300}),
            413,
            "payload_too_large",
            en["payload_too_large"].format(limit=200),
        ),
    ]
    for response, status, code, message in cases:
        assert response.status_code == status
        assert response.get_json() == {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    # /v1/chat itself stays the chat face (chatgpt-service), with its own envelope.
    assert client.post("/api/v1/chat", json={}).get_json()["data"]["error"] == "query_or_messages"


@pytest.mark.parametrize(
    ("query", "headers", "lang"),
    [
        ("?lang=ru", {}, "ru"),
        ("", {"Accept-Language": "ru-RU,en;q=0.5"}, "ru"),
        ("?lang=zh-TW", {"Accept-Language": "ru"}, "zh_TW"),
        ("", {}, "en"),
    ],
)
def test_error_messages_are_localized(client, query, headers, lang):
    response = client.post(f"/api/v1/chat/completions{query}", json={}, headers=headers)
    message = CATALOGS[lang]["missing_field"].format(field="messages")
    assert response.get_json()["error"]["message"] == message
    response = client.get(f"/api/v1/nope{query}", headers=headers)
    assert response.get_json()["error"]["message"] == CATALOGS[lang]["not_found"]


def test_empty_route_serves_the_face_at_v1(make_app, fake):
    client = make_app(API_KEY=CONFIGURED_KEY, ROUTE="").test_client()
    response = client.post("/v1/chat/completions", json={"messages": HELLO})
    assert response.get_json()["choices"][0]["message"]["content"] == "echo: Hello"
    assert client.get("/v1/nope").get_json()["error"]["code"] == "not_found"


def test_unreachable_upstream_is_a_502_without_its_address(make_app):
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    client = make_app(
        API_KEY=CONFIGURED_KEY, UPSTREAM_BASE_URL=base_url, UPSTREAM_RETRIES="0"
    ).test_client()
    response = client.post("/api/v1/chat/completions", json={"messages": HELLO})
    assert response.status_code == 502
    assert response.get_json()["error"]["code"] == "upstream_unreachable"
    assert response.get_json()["error"]["type"] == "api_error"
    assert base_url not in response.get_data(as_text=True)


# --- models in detail -----------------------------------------------------------------------------


def test_backend_openai_lists_only_the_upstream_models(make_app, extras):
    client = make_app(BACKEND="openai", UPSTREAM_BASE_URL=extras.url).test_client()
    body = client.get("/api/v1/models").get_json()
    assert body == {"object": "list", "data": ExtrasUpstream.MODELS}
    assert "Authorization" not in extras.received[-1][2]  # keyless upstreams (Ollama) work
    assert client.get(f"/api/v1/models/{LOCAL_ID}").status_code == 404


def test_backend_local_lists_only_the_embedded_model(make_app, extras):
    client = make_app(
        BACKEND="local", API_KEY=CONFIGURED_KEY, UPSTREAM_BASE_URL=extras.url
    ).test_client()
    headers = {"Authorization": "Bearer sk-client-0002"}
    body = client.get("/api/v1/models", headers=headers).get_json()
    assert [model["id"] for model in body["data"]] == [LOCAL_ID]
    assert client.get("/api/v1/models/gpt-4o", headers=headers).status_code == 404
    assert extras.received == []


def test_configured_key_lists_upstream_models_and_embedded_id_once(make_app, extras):
    extras.models_body = {
        "object": "list",
        "data": [{"id": LOCAL_ID, "object": "model", "created": 1, "owned_by": "elsewhere"}],
    }
    client = make_app(API_KEY=CONFIGURED_KEY, UPSTREAM_BASE_URL=extras.url).test_client()
    body = client.get("/api/v1/models/").get_json()
    assert [(m["id"], m["owned_by"]) for m in body["data"]] == [(LOCAL_ID, "chatservice")]
    assert extras.received[-1][2]["Authorization"] == f"Bearer {CONFIGURED_KEY}"


@pytest.mark.parametrize(
    ("status", "body", "our_status", "code"),
    [
        (401, {"error": {"code": "invalid_api_key"}}, 401, "upstream_unauthorized"),
        (200, {"object": "list"}, 502, "upstream_bad_response"),
        (200, {"object": "list", "data": [{"name": "x"}]}, 502, "upstream_bad_response"),
    ],
)
def test_upstream_model_list_failures(make_app, extras, status, body, our_status, code):
    extras.models_status, extras.models_body = status, body
    client = make_app(UPSTREAM_BASE_URL=extras.url, UPSTREAM_RETRIES="0").test_client()
    response = client.get("/api/v1/models", headers={"Authorization": "Bearer sk-client-0002"})
    assert response.status_code == our_status
    assert response.get_json()["error"]["code"] == code


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (ServiceError("bad_request", status=400), "invalid_request_error"),
        (ServiceError("not_found", status=404), "invalid_request_error"),
        (ServiceError("payload_too_large", status=413), "invalid_request_error"),
        (ServiceError("upstream_unauthorized", status=401), "authentication_error"),
        (ServiceError("http_error", status=403), "permission_error"),
        (ServiceError("rate_limited", status=429), "rate_limit_error"),
        (ServiceError("upstream_quota", status=429), "insufficient_quota"),
        (ServiceError("internal_error", status=500), "server_error"),
        (ServiceError("upstream_error", status=502), "api_error"),
        (ServiceError("local_model_busy", status=503), "api_error"),
        (ServiceError("upstream_timeout", status=504), "api_error"),
    ],
)
def test_error_types_follow_openai(error, expected):
    assert error_type(error) == expected


def test_lang_field_picks_the_language_and_is_not_forwarded(make_app, fake):
    client = make_app(API_KEY="sk-configured-key-0001").test_client()
    r = client.post(
        "/api/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}], "lang": "ru"},
    )
    assert r.status_code == 200
    assert "lang" not in fake.received[0].json


def test_whole_answer_is_compact_utf8_json_in_the_upstreams_key_order(client, fake):
    """The answer's bytes: the upstream's object in its own key order, non-ASCII as UTF-8
    (not ``\\u`` escapes), compact separators, one newline (what Flask's jsonify writes)."""
    answer = {
        "model": "gpt-4o-mini",
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "message": {"role": "assistant", "content": "你好, мир 😀"},
                "index": 0,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    fake.push(Reply(raw_body=json.dumps(answer).encode()))
    response = client.post(
        "/api/v1/chat/completions", json={"model": "gpt-4o-mini", "messages": HELLO}
    )
    assert response.status_code == 200
    expected = json.dumps(answer, ensure_ascii=False, separators=(",", ":")) + "\n"
    assert response.data == expected.encode("utf-8")
