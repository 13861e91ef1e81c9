"""Message catalogs, language tags, and the language a real request is answered in."""

from __future__ import annotations

import json
import re
import string
from pathlib import Path

import pytest

from chatservice.errors import ERRORS, BadRequest, ServiceError
from chatservice.i18n import LANGUAGES, normalize_language
from chatservice.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CATALOG_DIR = ROOT / "i18n"


def load_catalog(lang: str) -> dict[str, str]:
    with open(CATALOG_DIR / f"{lang}.json", encoding="utf-8") as fh:
        return json.load(fh)


CATALOGS = {lang: load_catalog(lang) for lang in LANGUAGES}
OTHER_LANGUAGES = [lang for lang in LANGUAGES if lang != "en"]


def placeholders(template: str) -> set[str]:
    """The ``{names}`` a ``str.format`` template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


# --- catalogs ---------------------------------------------------------------------------------


def test_the_four_languages_have_catalog_files():
    assert set(LANGUAGES) == {"en", "zh_CN", "zh_TW", "ru"}
    for lang in LANGUAGES:
        assert (CATALOG_DIR / f"{lang}.json").is_file()
        assert CATALOGS[lang], f"{lang}.json is empty"
        assert all(isinstance(value, str) and value.strip() for value in CATALOGS[lang].values())


@pytest.mark.parametrize("lang", OTHER_LANGUAGES)
def test_every_english_key_is_translated(lang):
    missing = sorted(set(CATALOGS["en"]) - set(CATALOGS[lang]))
    assert not missing, f"keys missing from {lang}.json: {missing}"


@pytest.mark.parametrize("lang", OTHER_LANGUAGES)
def test_no_translation_has_keys_english_lacks(lang):
    extra = sorted(set(CATALOGS[lang]) - set(CATALOGS["en"]))
    assert not extra, f"keys in {lang}.json but missing from en.json: {extra}"


@pytest.mark.parametrize("lang", OTHER_LANGUAGES)
def test_placeholders_match_english(lang):
    wrong = {
        key: (sorted(placeholders(template)), sorted(placeholders(CATALOGS[lang][key])))
        for key, template in CATALOGS["en"].items()
        if key in CATALOGS[lang] and placeholders(template) != placeholders(CATALOGS[lang][key])
    }
    assert not wrong, f"{lang}.json placeholders differ from en.json (en, {lang}): {wrong}"


@pytest.mark.parametrize("lang", LANGUAGES)
def test_templates_format_with_their_own_placeholders(lang):
    for key, template in CATALOGS[lang].items():
        params = {name: "X" for name in placeholders(template)}
        assert template.format(**params), key


# --- the error registry, the catalogs and the README agree ------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_registered_error_has_a_message(lang):
    missing = sorted(set(ERRORS) - set(CATALOGS[lang]))
    assert not missing, f"error keys without a {lang}.json entry: {missing}"


def test_every_catalog_message_is_a_registered_error():
    assert sorted(set(CATALOGS["en"]) - set(ERRORS)) == []


def readme_error_table() -> dict[str, int | None]:
    """Key -> status of the README's error table (``4xx``: no status of its own)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Errors and languages", 1)[1].split("\n## ", 1)[0]
    table: dict[str, int | None] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 2 or not re.fullmatch(r"\d{3}|4xx", cells[0]):
            continue
        status = int(cells[0]) if cells[0].isdigit() else None
        for key in re.findall(r"`([a-z][a-z0-9_]*)`", cells[1]):
            assert key not in table, f"{key} listed twice"
            table[key] = status
    return table


def test_the_readme_error_table_is_the_registry():
    assert readme_error_table() == ERRORS


def test_an_unregistered_key_cannot_be_raised():
    with pytest.raises(ValueError, match="unregistered error key 'no_such_key'"):
        ServiceError("no_such_key")
    with pytest.raises(ValueError, match="has status 400"):
        BadRequest("invalid_json", status=418)
    assert BadRequest("model_not_allowed").status == 400
    assert ServiceError("server_busy").status == 429
    assert ServiceError("http_error", status=418).status == 418


# --- language tags ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        ("zh_CN.UTF-8", "zh_CN"),
        ("ru_RU.UTF-8", "ru"),
        ("C.UTF-8", None),
        ("zh_TW", "zh_TW"),
        ("zh_HK", "zh_TW"),
        ("zh-Hant", "zh_TW"),
        ("zh-Hans-CN", "zh_CN"),
        ("zh-Hant-TW", "zh_TW"),
        ("zh", "zh_CN"),
        ("en-US", "en"),
        ("en", "en"),
        ("ru", "ru"),
        ("RU-ru", "ru"),
        ("ru_RU.UTF-8@euro", "ru"),
        ("fr_FR", None),
        ("", None),
        (None, None),
        ("POSIX", None),
        ("C", None),
        ("-", None),
    ],
)
def test_normalize_language(tag, expected):
    assert normalize_language(tag) == expected


# --- the language of a real request ------------------------------------------------------------

EMPTY_FIELD = {
    lang: CATALOGS[lang]["empty_field"].format(field="user_content") for lang in LANGUAGES
}


def _message(make_app, *, query=None, body_lang=None, accept=None, **env) -> str:
    app = make_app(API_KEY="sk-test-i18n", **env)
    body: dict[str, str] = {"user_content": ""}
    if body_lang is not None:
        body["lang"] = body_lang
    headers = {"Accept-Language": accept} if accept is not None else {}
    url = "/api" if query is None else f"/api?lang={query}"
    response = app.test_client().post(url, json=body, headers=headers)
    assert response.status_code == 400
    data = response.get_json()["data"]
    assert data["error"] == "empty_field"
    return data["response"]


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (
            {"query": "ru", "body_lang": "zh_CN", "accept": "zh-TW", "CHAT_LANG": "zh_CN"},
            "ru",
        ),
        ({"query": "zh-TW", "body_lang": "ru", "accept": "ru", "CHAT_LANG": "ru"}, "zh_TW"),
        ({"body_lang": "zh_CN", "accept": "zh-TW", "CHAT_LANG": "ru"}, "zh_CN"),
        ({"body_lang": "en", "accept": "ru", "CHAT_LANG": "ru"}, "en"),
        ({"accept": "zh-TW,ru;q=0.5", "CHAT_LANG": "ru"}, "zh_TW"),
        ({"accept": "ru-RU", "CHAT_LANG": "zh_CN"}, "ru"),
        ({"CHAT_LANG": "ru"}, "ru"),
        ({"CHAT_LANG": "zh_TW"}, "zh_TW"),
        ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
        ({}, "en"),
        # Unknown choices at one level fall through to the next.
        ({"query": "xx", "body_lang": "ru", "CHAT_LANG": "zh_CN"}, "ru"),
        ({"query": "fr", "body_lang": "de", "accept": "zh-Hant", "CHAT_LANG": "ru"}, "zh_TW"),
        ({"accept": "fr-FR,de;q=0.9,ru;q=0.8", "CHAT_LANG": "zh_CN"}, "ru"),
        ({"accept": "fr-FR", "CHAT_LANG": "zh_CN"}, "zh_CN"),
        ({"accept": "de", "CHAT_LANG": "xx"}, "en"),
        ({"accept": "ru;q=0.2,zh-CN;q=0.9"}, "zh_CN"),
    ],
)
def test_language_choice_order(make_app, fake, case, expected):
    assert _message(make_app, **case) == EMPTY_FIELD[expected]
    assert fake.received == []


def test_body_lang_that_is_not_a_string_is_ignored(make_app):
    app = make_app(API_KEY="sk-test-i18n", CHAT_LANG="ru")
    response = app.test_client().post("/api", json={"user_content": "", "lang": 5})
    assert response.get_json()["data"]["response"] == EMPTY_FIELD["ru"]


def test_chat_face_uses_the_same_order(make_app):
    app = make_app(API_KEY="sk-test-i18n", CHAT_LANG="zh_TW")
    client = app.test_client()
    expected = {lang: CATALOGS[lang]["query_or_messages"] for lang in LANGUAGES}
    assert client.post("/api/v1/chat", json={}).get_json()["msg"] == expected["zh_TW"]
    response = client.post("/api/v1/chat", json={}, headers={"Accept-Language": "ru"})
    assert response.get_json()["msg"] == expected["ru"]
    response = client.post(
        "/api/v1/chat?lang=zh_CN", json={"lang": "en"}, headers={"Accept-Language": "ru"}
    )
    assert response.get_json()["msg"] == expected["zh_CN"]
    response = client.post("/api/v1/chat", json={"lang": "en"}, headers={"Accept-Language": "ru"})
    assert response.get_json()["msg"] == expected["en"]


# --- the configured default ---------------------------------------------------------------------


def default_lang(env: dict[str, str]) -> str:
    return Settings.from_env(env, env_file=None).default_lang


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CHAT_LANG": "ru", "LANG": "zh_CN.UTF-8"}, "ru"),
        ({"CHAT_LANG": "zh_TW", "LANG": "ru_RU.UTF-8"}, "zh_TW"),
        ({"CHAT_LANG": "", "LANG": "ru_RU.UTF-8"}, "ru"),
        ({"LANG": "zh_CN.UTF-8"}, "zh_CN"),
        ({"LANG": "zh_TW.UTF-8"}, "zh_TW"),
        ({"LANG": "ru_RU.UTF-8"}, "ru"),
        ({"LANG": "C.UTF-8"}, "en"),
        ({"LANG": "POSIX"}, "en"),
        ({"CHAT_LANG": "xx"}, "en"),
        ({}, "en"),
    ],
)
def test_settings_default_language(env, expected):
    assert default_lang(env) == expected


def test_unknown_chat_lang_still_serves_english(make_app):
    app = make_app(API_KEY="sk-test-i18n", CHAT_LANG="xx")
    response = app.test_client().post("/api", json={"user_content": ""})
    assert response.status_code == 400
    assert response.get_json()["data"]["response"] == EMPTY_FIELD["en"]
