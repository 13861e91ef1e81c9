"""Client API keys (AUTH_MODE=keys) through the Flask test client and a real fake upstream:
the admin API's key lifecycle, hashing at rest, every refusal with its status and key in the
faces' envelopes and languages, settlement with the real usage, the usage report and the
metrics. Real servers (gunicorn, Redis, the CLI) are in test_client_keys_live.py.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
from pathlib import Path

import pytest

from chatservice.models import ChatRequest
from chatservice.tokens import count_prompt_tokens, count_text_tokens
from tests.fakeupstream import Reply

ADMIN = "admin-token-client-keys-1"  # noqa: S105 - a test credential
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN}"}
UPSTREAM_KEY = "sk-test-upstream-keys-0001"
CHAT = "/api/v1/chat/completions"
COMPLETIONS = "/api/v1/completions"


@pytest.fixture
def keyed(make_app, tmp_path):
    """An AUTH_MODE=keys app on a SQLite store; returns ``(client, store path)``."""

    def make(**env: str):
        db = tmp_path / "keys.db"
        env = {
            "AUTH_MODE": "keys",
            "ADMIN_TOKEN": ADMIN,
            "API_KEY": UPSTREAM_KEY,
            "BACKEND": "openai",
            "STORE_URL": f"sqlite:///{db}",
            **env,
        }
        return make_app(**env).test_client(), db

    return make


def create(client, **fields):
    r = client.post(
        "/api/admin/client-keys", json={"name": "ci-bot", **fields}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def admin_error(r) -> str:
    """The error key of an admin API answer (the Docker ChatGPT API face's envelope)."""
    return r.get_json()["data"]["error"]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def chat(client, key: str, model: str = "gpt-4o", **body):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}], **body}
    return client.post(CHAT, json=body, headers=bearer(key))


# --- the key lifecycle through the admin API ---------------------------------------------------


def test_key_lifecycle_through_the_admin_api(keyed, fake):
    client, _ = keyed()
    created = create(client, models=["gpt-4o*"], rpm=60, budget_tokens=1_000_000)
    key = created["key"]
    assert re.fullmatch(r"csk-[A-Za-z0-9_-]{43}", key)
    assert created["name"] == "ci-bot" and created["models"] == ["gpt-4o*"]
    assert created["rpm"] == 60 and created["budget_tokens"] == 1_000_000
    assert created["enabled"] is True and created["expires_at"] is None
    key_id = created["id"]

    listed = client.get("/api/admin/client-keys", headers=ADMIN_HEADERS).get_json()["keys"]
    assert [k["id"] for k in listed] == [key_id]
    assert listed[0]["key"] == f"csk-...{key[-4:]}"
    assert key not in client.get("/api/admin/client-keys", headers=ADMIN_HEADERS).get_data(True)
    by_name = client.get("/api/admin/client-keys/ci-bot", headers=ADMIN_HEADERS).get_json()
    assert by_name["id"] == key_id and by_name["key"] == listed[0]["key"]

    assert chat(client, key).status_code == 200
    # The wrapper services' faces take the key in the token header too.
    r = client.post("/api", json={"user_content": "hi", "model": "gpt-4o"}, headers={"token": key})
    assert r.status_code == 200, r.get_json()

    r = client.patch(
        f"/api/admin/client-keys/{key_id}", json={"enabled": False}, headers=ADMIN_HEADERS
    )
    assert r.status_code == 200 and r.get_json()["enabled"] is False
    r = chat(client, key)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "client_key_disabled"
    client.patch(f"/api/admin/client-keys/{key_id}", json={"enabled": True}, headers=ADMIN_HEADERS)
    assert chat(client, key).status_code == 200

    r = client.patch(
        "/api/admin/client-keys/ci-bot",
        json={"name": "ci-bot-2", "rpm": None},
        headers=ADMIN_HEADERS,
    )
    assert r.get_json()["name"] == "ci-bot-2" and r.get_json()["rpm"] == 0

    assert (
        client.delete(f"/api/admin/client-keys/{key_id}", headers=ADMIN_HEADERS).status_code == 204
    )
    r = chat(client, key)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_failed"
    r = client.get(f"/api/admin/client-keys/{key_id}", headers=ADMIN_HEADERS)
    assert r.status_code == 404 and admin_error(r) == "client_key_not_found"


def test_admin_api_refuses_without_the_token_and_checks_fields(keyed, make_app):
    client, _ = keyed()
    assert client.get("/api/admin/client-keys").status_code == 401
    r = client.get("/api/admin/client-keys", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and admin_error(r) == "admin_unauthorized"
    off = make_app(AUTH_MODE="keys").test_client()
    assert off.get("/api/admin/client-keys", headers=ADMIN_HEADERS).status_code == 404
    assert off.get("/api/admin/usage", headers=ADMIN_HEADERS).status_code == 404

    create(client)
    r = client.post("/api/admin/client-keys", json={"name": "ci-bot"}, headers=ADMIN_HEADERS)
    assert r.status_code == 409 and admin_error(r) == "client_key_name_taken"
    cases = [
        ({}, "missing_field", "name"),
        ({"name": "x" * 65}, "invalid_key_name", "name"),
        ({"name": "a", "rpm": -1}, "out_of_range", "rpm"),
        ({"name": "a", "budget_tokens": "many"}, "not_an_integer", "budget_tokens"),
        ({"name": "a", "models": []}, "invalid_model_patterns", "models"),
        ({"name": "a", "expires_at": "tomorrow"}, "invalid_time", "expires_at"),
        ({"name": "a", "expires_at": 1e300}, "invalid_time", "expires_at"),
        ({"name": "a", "models": "gpt-4o"}, "invalid_model_patterns", "models"),
        ({"name": "a", "enabled": "yes"}, "not_a_boolean", "enabled"),
        ({"name": "a", "enabled": None}, "not_a_boolean", "enabled"),
    ]
    for body, code, field in cases:
        r = client.post(
            "/api/admin/client-keys", json=body, headers={**ADMIN_HEADERS, "Accept-Language": "ru"}
        )
        assert r.status_code == 400, body
        assert admin_error(r) == code, body
        message = r.get_json()["data"]["response"]
        assert field in message and re.search("[а-яА-Я]", message), message


def test_the_store_keeps_only_the_hash(keyed):
    client, db = keyed()
    key = create(client)["key"]
    stored = b"".join(p.read_bytes() for p in Path(db).parent.glob("keys.db*"))
    assert key.encode() not in stored
    assert key[4:].encode() not in stored
    with sqlite3.connect(db) as conn:
        hashes = [row[0] for row in conn.execute("SELECT hash FROM client_keys")]
    assert hashes == [hashlib.sha256(key.encode()).hexdigest()]


# --- refusals -------------------------------------------------------------------------------


def test_each_refusal_has_its_status_and_key(keyed, fake):
    client, _ = keyed()
    r = client.post(CHAT, json={"messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_required"
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = chat(client, "csk-unknown")
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "auth_failed"

    limited = create(client, name="limited", models=["gpt-4o*"], rpm=2)["key"]
    r = chat(client, limited, model="gpt-3.5-turbo")
    assert r.status_code == 403
    assert r.get_json()["error"] == {
        "message": "This API key may not use the model 'gpt-3.5-turbo'.",
        "type": "permission_error",
        "param": None,
        "code": "model_not_allowed_for_key",
    }
    assert chat(client, limited).status_code == 200
    assert chat(client, limited, model="gpt-4o-mini").status_code == 200
    r = chat(client, limited)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "key_rate_limited"
    assert 1 <= int(r.headers["Retry-After"]) <= 60
    assert r.headers["Retry-After"] in r.get_json()["error"]["message"]

    tpm = create(client, name="tpm", tpm=100)["key"]
    assert chat(client, tpm, max_tokens=60).status_code == 200  # settles 8 of its 68
    assert chat(client, tpm, max_tokens=60).status_code == 200  # 8 + 68 <= 100
    r = chat(client, tpm, max_tokens=90)  # 16 + 98 > 100
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "key_tokens_limited"
    assert int(r.headers["Retry-After"]) >= 1

    budget = create(client, name="budget", budget_tokens=50)["key"]
    r = chat(client, budget, max_tokens=100)
    assert r.status_code == 429 and r.get_json()["error"]["code"] == "budget_exhausted"
    assert "Retry-After" not in r.headers
    daily = create(client, name="daily", daily_budget_tokens=50)["key"]
    r = chat(client, daily, max_tokens=100)
    assert r.get_json()["error"]["code"] == "budget_exhausted" and int(r.headers["Retry-After"]) > 0

    expired = create(client, name="old", expires_at=1577836800)["key"]
    r = chat(client, expired)
    assert r.status_code == 401 and r.get_json()["error"]["code"] == "client_key_expired"
    # Nothing refused reached the upstream: two limited answers and two tpm answers did.
    assert len(fake.received) == 4


@pytest.mark.parametrize(
    ("lang", "pattern"), [("zh-CN", "密钥"), ("zh-TW", "金鑰"), ("ru", "ключ"), ("en", "key")]
)
def test_refusals_are_localized_in_each_face(keyed, fake, lang, pattern):
    client, _ = keyed()
    key = create(client, models=["gpt-4o"])["key"]
    headers = {"token": key, "Accept-Language": lang}
    # The Docker ChatGPT API platform's face and chatgpt-service's face.
    r = client.post("/api", json={"user_content": "hi", "model": "gpt-4"}, headers=headers)
    assert r.status_code == 403 and pattern in r.get_json()["data"]["response"], r.get_json()
    r = client.post("/api/v1/chat", json={"query": "hi", "model": "gpt-4"}, headers=headers)
    assert r.status_code == 403 and pattern in r.get_data(True)
    r = client.post(
        CHAT,
        json={"model": "gpt-4", "messages": [{"role": "user", "content": "x"}]},
        headers={**bearer(key), "Accept-Language": lang},
    )
    assert r.status_code == 403 and pattern in r.get_json()["error"]["message"]


# --- settlement and usage ------------------------------------------------------------------


def spent(client, name: str) -> int:
    return client.get(f"/api/admin/client-keys/{name}", headers=ADMIN_HEADERS).get_json()["spent"][
        "total"
    ]


def usage(client, **query):
    r = client.get("/api/admin/usage", query_string=query, headers=ADMIN_HEADERS)
    assert r.status_code == 200, r.get_data(True)
    return r


def test_a_whole_answer_settles_with_the_upstreams_usage_and_is_priced(keyed, fake):
    client, _ = keyed(PRICES="gpt-4o=2.5/10,gpt-4o-*=0.15/0.6")
    key = create(client, budget_tokens=10_000)["key"]
    fake.default = Reply(text="one two three")
    assert chat(client, key, max_tokens=500).status_code == 200
    # The fake upstream reports 5 prompt and 3 completion tokens: the reservation of
    # prompt + 500 is replaced by them.
    assert spent(client, "ci-bot") == 8
    assert chat(client, key, model="gpt-4o-mini").status_code == 200
    fake.push(Reply(status=500, body={"error": {"message": "boom"}}))
    assert chat(client, key).status_code == 502
    assert spent(client, "ci-bot") == 8 + 8

    report = usage(client).get_json()
    rows = {row["model"]: row for row in report["rows"]}
    assert rows["gpt-4o"]["requests"] == 2 and rows["gpt-4o"]["errors"] == 1
    assert rows["gpt-4o"]["prompt_tokens"] == 5 and rows["gpt-4o"]["completion_tokens"] == 3
    assert rows["gpt-4o"]["cost"] == pytest.approx((5 * 2.5 + 3 * 10) / 1e6)
    assert rows["gpt-4o-mini"]["cost"] == pytest.approx((5 * 0.15 + 3 * 0.6) / 1e6)
    assert rows["gpt-4o"]["key"] == "ci-bot"
    assert report["totals"]["total_tokens"] == 16 and report["totals"]["requests"] == 3
    assert report["totals"]["cost"] == pytest.approx(
        rows["gpt-4o"]["cost"] + rows["gpt-4o-mini"]["cost"]
    )


def test_a_stream_without_usage_settles_with_the_services_own_count(keyed, fake):
    client, _ = keyed()
    key = create(client, budget_tokens=10_000)["key"]
    text = "alpha beta gamma delta"
    fake.default = Reply(text=text)
    r = chat(client, key, stream=True, max_tokens=300)
    assert r.status_code == 200 and "[DONE]" in r.get_data(True)
    req = ChatRequest(
        kind="chat",
        model="gpt-4o",
        max_tokens=300,
        messages=[{"role": "user", "content": "hello there"}],
    )
    with client.application.app_context():  # the app's own token counter
        prompt = count_prompt_tokens(req)
        expected = prompt + count_text_tokens(text, "gpt-4o")
    assert spent(client, "ci-bot") == expected
    row = usage(client).get_json()["rows"][0]
    assert row["prompt_tokens"] == prompt and row["requests"] == 1


def test_usage_report_filters_and_csv(keyed, fake):
    client, _ = keyed()
    a = create(client, name="team-a")["key"]
    b = create(client, name="team-b")["key"]
    chat(client, a)
    chat(client, b, model="gpt-4o-mini")
    chat(client, b)
    assert {r["key"] for r in usage(client).get_json()["rows"]} == {"team-a", "team-b"}
    assert [r["model"] for r in usage(client, key="team-b").get_json()["rows"]] == [
        "gpt-4o",
        "gpt-4o-mini",
    ]
    assert [r["key"] for r in usage(client, model="gpt-4o").get_json()["rows"]] == [
        "team-a",
        "team-b",
    ]
    assert usage(client, **{"from": "2000-01-01", "to": "2000-01-31"}).get_json()["rows"] == []
    r = usage(client, format="csv")
    assert r.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(r.get_data(True))))
    assert len(rows) == 3 and rows[0]["key"] == "team-a" and int(rows[0]["requests"]) == 1
    assert usage(client, **{"from": "2030-01-01", "to": "2029-01-01"}).get_json()["rows"] == []
    for query, code in (
        ({"from": "yesterday"}, "invalid_date"),
        ({"to": "20261201"}, "invalid_date"),
        ({"to": ""}, "invalid_date"),
        ({"format": ""}, "invalid_choice"),
        ({"format": "xml"}, "invalid_choice"),
    ):
        r = client.get("/api/admin/usage", query_string=query, headers=ADMIN_HEADERS)
        assert r.status_code == 400 and admin_error(r) == code


def test_metrics_carry_the_key_name_never_the_key(keyed, fake):
    client, _ = keyed()
    key = create(client, name="metrics-bot")["key"]
    fake.default = Reply(text="a b")
    chat(client, key)
    text = client.get("/metrics").get_data(True)
    assert 'chatservice_client_key_requests_total{key="metrics-bot",outcome="done"} 1.0' in text
    assert 'chatservice_client_key_tokens_total{direction="out",key="metrics-bot"} 2.0' in text
    assert key not in text and key[4:] not in text


def test_other_modes_are_unchanged(make_app, fake):
    client = make_app(API_KEY=UPSTREAM_KEY, BACKEND="openai").test_client()
    r = client.post(CHAT, json={"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 200


def test_prices_come_from_the_environment_or_a_toml_table(tmp_path):
    from chatservice.settings import ConfigError
    from tests.conftest import settings_from

    assert settings_from({"PRICES": "gpt-4o=2.5/10, gpt-4o-*=0.15/0.6"}).prices == {
        "gpt-4o": (2.5, 10.0),
        "gpt-4o-*": (0.15, 0.6),
    }
    toml = tmp_path / "config.toml"
    toml.write_text('[prices]\n"gpt-4o" = { input = 2.5, output = 10 }\n', encoding="utf-8")
    assert settings_from({"CONFIG_FILE": str(toml)}).prices == {"gpt-4o": (2.5, 10.0)}
    for bad in ("gpt-4o=2.5", "gpt-4o=-1/2", "=1/2", "gpt-4o=a/b"):
        with pytest.raises(ConfigError, match="^PRICES: "):
            settings_from({"PRICES": bad})
    toml.write_text('[prices]\n"gpt-4o" = 3\n', encoding="utf-8")
    with pytest.raises(ConfigError, match=r"\[prices\]"):
        settings_from({"CONFIG_FILE": str(toml)})
    # keys mode needs no AUTH_TOKEN: every client brings its own key.
    assert settings_from({"AUTH_MODE": "keys"}).auth_mode == "keys"


def test_the_memory_store_serves_a_single_process(make_app, fake):
    client = make_app(AUTH_MODE="keys", ADMIN_TOKEN=ADMIN, API_KEY=UPSTREAM_KEY).test_client()
    key = create(client, budget_tokens=100)["key"]
    fake.default = Reply(text="x")
    assert chat(client, key, max_tokens=10).status_code == 200
    assert spent(client, "ci-bot") == 6
    assert usage(client).get_json()["rows"][0]["requests"] == 1
