"""``POST /{ROUTE}/v1/embeddings``: the official SDK against the fake upstream and against the
embedded model, floats and base64, and the face's validation.
"""

from __future__ import annotations

import base64
import struct

import pytest

from tests.fakeupstream import Reply, fake_embedding
from tests.test_i18n import CATALOGS
from tests.test_openai_api import sdk  # noqa: F401 - the fixture

KEY = "sk-test-configured-0001"
URL = "/api/v1/embeddings"


def test_sdk_embeddings_through_the_upstream(sdk, live_server, fake):  # noqa: F811
    server = live_server(API_KEY=KEY, UPSTREAM_RETRIES="0")
    client = sdk(server)
    # The SDK asks for base64 and decodes it itself.
    result = client.embeddings.create(model="text-embedding-3-small", input="hello")
    assert result.data[0].embedding == fake_embedding("hello")
    assert result.model == "text-embedding-3-small"
    assert result.usage.prompt_tokens == 2
    sent = fake.received[-1]
    assert sent.path == "/v1/embeddings"
    assert sent.json["input"] == "hello" and sent.json["model"] == "text-embedding-3-small"
    assert sent.json["encoding_format"] == "base64"
    assert sent.headers["Authorization"] == "Bearer sk-test"  # the client's own key
    # Several inputs, floats asked for explicitly.
    result = client.embeddings.create(
        model="text-embedding-3-small", input=["a", "bcd"], encoding_format="float"
    )
    assert [item.embedding for item in result.data] == [fake_embedding("a"), fake_embedding("bcd")]
    assert [item.index for item in result.data] == [0, 1]


def test_sdk_embeddings_from_the_embedded_model(sdk, live_server, fake):  # noqa: F811
    server = live_server(BACKEND="local")
    client = sdk(server)
    result = client.embeddings.create(model="smollm2-135m-instruct", input=["hello", "world"])
    assert result.model == "smollm2-135m-instruct"
    vectors = [item.embedding for item in result.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 100
    assert vectors[0] != vectors[1]
    assert result.usage.prompt_tokens > 0
    floats = client.embeddings.create(
        model="smollm2-135m-instruct", input="hello", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vectors[0], rel=1e-5, abs=1e-6)
    assert fake.received == []


def test_base64_from_the_embedded_model_is_little_endian_float32(make_app):
    client = make_app(BACKEND="local").test_client()
    as_floats = client.post(URL, json={"model": "m", "input": "hi"}).get_json()
    as_base64 = client.post(
        URL, json={"model": "m", "input": "hi", "encoding_format": "base64"}
    ).get_json()
    vector = as_floats["data"][0]["embedding"]
    raw = base64.b64decode(as_base64["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(raw) // 4}f", raw)) == pytest.approx(vector, rel=1e-6)
    assert as_floats["object"] == "list" and as_floats["data"][0]["object"] == "embedding"


@pytest.mark.parametrize(
    ("payload", "key", "field"),
    [
        ({"model": "m"}, "missing_field", "input"),
        ({"model": "m", "input": ""}, "invalid_embedding_input", "input"),
        ({"model": "m", "input": []}, "invalid_embedding_input", "input"),
        ({"model": "m", "input": [1, "a"]}, "invalid_embedding_input", "input"),
        ({"model": "m", "input": {"a": 1}}, "invalid_embedding_input", "input"),
        ({"input": "a"}, "missing_field", "model"),
        ({"model": "m", "input": "a", "encoding_format": "hex"}, "invalid_encoding_format", None),
    ],
)
def test_bad_bodies_get_a_localized_400(client, fake, payload, key, field):
    response = client.post(URL, json={**payload, "lang": "ru"})
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == key
    assert error["type"] == "invalid_request_error"
    params = {"field": field or "encoding_format"}
    assert error["message"] == CATALOGS["ru"][key].format(**params)
    assert fake.received == []


def test_token_ids_are_passed_upstream_but_refused_by_the_embedded_model(make_app, fake):
    upstream = make_app(API_KEY=KEY).test_client()
    response = upstream.post(URL, json={"model": "text-embedding-3-small", "input": [[1, 2, 3]]})
    assert response.status_code == 200
    assert fake.received[-1].json["input"] == [[1, 2, 3]]
    local = make_app(BACKEND="local").test_client()
    response = local.post(URL, json={"model": "m", "input": [1, 2, 3]})
    assert response.status_code == 400
    assert response.get_json()["error"]["code"] == "invalid_embedding_input"


def test_upstream_failures_and_logging(make_app, fake, caplog):
    client = make_app(API_KEY=KEY, UPSTREAM_RETRIES="0").test_client()
    fake.push(Reply(status=503))
    response = client.post(URL, json={"model": "text-embedding-3-small", "input": "x"})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "upstream_overloaded"
    with caplog.at_level("INFO", logger="chatservice.access"):
        ask = {"model": "text-embedding-3-small", "input": "x"}
        client.post(URL, json=ask, headers={"X-Request-ID": "e"})
    [line] = [r.access for r in caplog.records if getattr(r, "access", {}).get("request_id") == "e"]
    assert (line["backend"], line["prompt_tokens"], line["usage"]) == ("upstream", 2, "reported")
