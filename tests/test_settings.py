"""Settings: defaults, precedence, invalid values, secrets, and the entry point's exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chatservice.settings import ConfigError, Secret, Settings
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent


def load(env: dict[str, str], env_file: Path | None = None) -> Settings:
    return Settings.from_env(env, env_file=env_file)


# --- defaults -----------------------------------------------------------------------------------


def test_defaults():
    settings = load({})
    assert settings.host == "0.0.0.0"
    assert settings.port == 5000
    assert settings.workers == 1
    assert settings.route == "/api"
    assert (settings.hour_limit, settings.minute_limit, settings.second_limit) == (0, 0, 0)
    assert settings.rate_limits == []
    assert settings.backend == "auto"
    assert settings.upstream_base_url == "https://api.openai.com/v1"
    assert settings.upstream_connect_timeout == 10
    assert settings.upstream_read_timeout == 120
    assert settings.default_model == "gpt-3.5-turbo"
    assert settings.max_body_bytes == 1048576
    assert settings.local_max_queue == 16
    assert settings.api_keys == ()
    assert settings.default_lang == "en"


def test_missing_env_file_is_not_an_error(tmp_path):
    assert load({}, env_file=tmp_path / "absent.env") == load({})


# --- precedence ---------------------------------------------------------------------------------


def test_environment_beats_env_file_beats_default(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text(
        "PORT=6000\nWORKERS=3\nDEFAULT_MODEL=from-file\nROUTE=file/route\n", encoding="utf-8"
    )
    settings = load({"PORT": "7000", "ROUTE": "env"}, env_file=env_file)
    assert settings.port == 7000  # environment over .env
    assert settings.route == "/env"
    assert settings.workers == 3  # .env over default
    assert settings.default_model == "from-file"
    assert settings.host == "0.0.0.0"  # default
    assert settings.max_body_bytes == 1048576


def test_env_file_value_is_validated_too(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("MINUTE_LIMIT=lots\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load({}, env_file=env_file)
    assert str(info.value).startswith("MINUTE_LIMIT")
    # A valid environment value hides the invalid file value.
    assert load({"MINUTE_LIMIT": "5"}, env_file=env_file).minute_limit == 5


def test_lang_in_env_file_sets_the_default_language(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("LANG=ru_RU.UTF-8\n", encoding="utf-8")
    assert load({}, env_file=env_file).default_lang == "ru"
    assert load({"CHAT_LANG": "zh_TW"}, env_file=env_file).default_lang == "zh_TW"


# --- invalid values -----------------------------------------------------------------------------

LIMITS = ("HOUR_LIMIT", "MINUTE_LIMIT", "SECOND_LIMIT")


def assert_one_line_error(env: dict[str, str], variable: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(env)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(variable), message
    assert message.strip() == message
    return message


@pytest.mark.parametrize("variable", LIMITS)
@pytest.mark.parametrize("raw", [None, "", "0", " ", " 0 "])
def test_limit_off(variable, raw):
    env = {} if raw is None else {variable: raw}
    settings = load(env)
    assert getattr(settings, variable.lower()) == 0
    assert settings.rate_limits == []


@pytest.mark.parametrize(
    ("variable", "window"),
    [("HOUR_LIMIT", "hour"), ("MINUTE_LIMIT", "minute"), ("SECOND_LIMIT", "second")],
)
def test_limit_on(variable, window):
    settings = load({variable: "5"})
    assert getattr(settings, variable.lower()) == 5
    assert settings.rate_limits == [f"5/{window}"]


def test_all_limits_on():
    settings = load({"HOUR_LIMIT": "100", "MINUTE_LIMIT": "10", "SECOND_LIMIT": "2"})
    assert settings.rate_limits == ["2/second", "10/minute", "100/hour"]


@pytest.mark.parametrize("variable", LIMITS)
@pytest.mark.parametrize("raw", ["abc", "-1", "1.5"])
def test_invalid_limit(variable, raw):
    message = assert_one_line_error({variable: raw}, variable)
    assert raw in message


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("PORT", "x"),
        ("PORT", "0"),
        ("PORT", ""),
        ("WORKERS", "0"),
        ("BACKEND", "gpu"),
        ("UPSTREAM_BASE_URL", "ftp://x"),
        ("UPSTREAM_BASE_URL", "api.openai.com"),
        ("UPSTREAM_BASE_URL", ""),
        ("UPSTREAM_READ_TIMEOUT", "0"),
        ("UPSTREAM_READ_TIMEOUT", "-5"),
        ("UPSTREAM_READ_TIMEOUT", "soon"),
        ("UPSTREAM_CONNECT_TIMEOUT", "0"),
        ("MAX_BODY_BYTES", "0"),
        ("LOG_LEVEL", "loud"),
        ("LOCAL_PRELOAD", "maybe"),
        ("ROUTE", "a/../b"),
    ],
)
def test_invalid_values_name_the_variable(variable, raw):
    assert_one_line_error({variable: raw}, variable)


def test_value_like_settings_are_normalised():
    settings = load(
        {
            "PORT": " 8080 ",
            "BACKEND": "LOCAL",
            "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1/",
            "UPSTREAM_READ_TIMEOUT": "2.5",
            "ROUTE": "//v2//chat/",
        }
    )
    assert settings.port == 8080
    assert settings.backend == "local"
    assert settings.upstream_base_url == "http://127.0.0.1:9/v1"
    assert settings.upstream_read_timeout == 2.5
    assert settings.route == "/v2/chat"


@pytest.mark.parametrize(
    ("raw", "route"), [("api", "/api"), ("/api/", "/api"), ("", ""), ("/", "")]
)
def test_route_spellings(raw, route):
    assert load({"ROUTE": raw}).route == route


# --- secrets ------------------------------------------------------------------------------------


def test_api_keys_are_secrets_that_never_show():
    settings = load({"API_KEY": "sk-aaa, sk-bbb"})
    assert len(settings.api_keys) == 2
    assert all(isinstance(key, Secret) for key in settings.api_keys)
    assert [key.get_secret_value() for key in settings.api_keys] == ["sk-aaa", "sk-bbb"]
    secret = settings.api_keys[0]
    shown = [
        repr(settings),
        str(settings),
        f"{settings}",
        f"{secret}",
        f"{secret!r}",
        f"{secret!s}",
        f"{secret:>40}",
        format(secret),
        "%s" % secret,  # noqa: UP031 - the %-style path is what is under test
        "%r" % secret,  # noqa: UP031
        str(secret),
        repr(secret),
        str(settings.api_keys),
    ]
    for text in shown:
        assert "sk-aaa" not in text, text
        assert "sk-bbb" not in text, text
    assert "**" in repr(secret)


def test_api_key_list_ignores_blank_entries():
    settings = load({"API_KEY": " sk-one ,, ,sk-two,"})
    assert [key.get_secret_value() for key in settings.api_keys] == ["sk-one", "sk-two"]
    assert load({"API_KEY": ""}).api_keys == ()


def test_secret_cannot_be_pickled():
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(Secret("sk-aaa"))


def test_secret_equality_and_truth():
    assert Secret("sk-aaa") == Secret("sk-aaa")
    assert Secret("sk-aaa") != Secret("sk-bbb")
    assert Secret("sk-aaa") != "sk-aaa"
    assert bool(Secret("sk-aaa"))
    assert not Secret("")


# --- the real entry point -----------------------------------------------------------------------


def test_entry_point_exits_on_an_invalid_setting(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("LANG", "CHAT_LANG")}
    for name in ("HOUR_LIMIT", "SECOND_LIMIT", "ROUTE", "BACKEND", "UPSTREAM_BASE_URL"):
        env.pop(name, None)
    env.update({"MINUTE_LIMIT": "abc", "PORT": str(free_port()), "HOST": "127.0.0.1"})
    proc = subprocess.run(
        [sys.executable, "app.py"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=10,
        check=False,
    )
    output = proc.stdout.decode(errors="replace")
    assert proc.returncode != 0, output
    assert "Traceback" not in output, output
    mentions = [line for line in output.splitlines() if "MINUTE_LIMIT" in line]
    assert len(mentions) == 1, output
    assert "abc" in mentions[0]
