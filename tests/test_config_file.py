"""The TOML config file, ChatGPT-API on gin's CHAT_ variables, and app.py's command-line flags."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests

from chatservice.settings import ConfigError, Settings
from tests.conftest import ROOT


def load(env: dict[str, str]) -> Settings:
    return Settings.from_env(env, env_file=None)


def test_toml_file_under_the_environment(tmp_path):
    config = tmp_path / "chat.toml"
    config.write_text(
        'port = 8090\nroute = "v2/chat"\nminute_limit = 7\n'
        'api_key = ["sk-one-aaaaaaaaaa", "sk-two-bbbbbbbbbb"]\n'
        '[openai]\nmodel = "gpt-4o-mini"\ntemperature = 0.4\nbotdesc = "You are Alice."\n'
        "[server]\nauto_remove_keys = false\n",
        encoding="utf-8",
    )
    settings = load({"CONFIG_FILE": str(config), "PORT": "9000"})
    assert settings.port == 9000  # the environment wins
    assert settings.route == "/v2/chat" and settings.minute_limit == 7
    assert [key.masked() for key in settings.api_keys] == ["sk-...aaaa", "sk-...bbbb"]
    assert settings.chat_model == "gpt-4o-mini" and settings.chat_temperature == 0.4
    assert settings.bot_desc == "You are Alice." and settings.auto_remove_keys is False


def test_dotenv_wins_over_toml(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "config.toml").write_text("port = 8090\nworkers = 3\n", encoding="utf-8")
    (tmp_path / ".env").write_text("PORT=7000\n", encoding="utf-8")
    settings = Settings.from_env({}, env_file=".env")  # config.toml found by default
    assert settings.port == 7000 and settings.workers == 3


def test_missing_default_config_file_is_fine_but_a_named_one_is_not(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load({}).port == 5000
    with pytest.raises(ConfigError, match="^CONFIG_FILE: no such file"):
        load({"CONFIG_FILE": str(tmp_path / "nope.toml")})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("port = \n", "CONFIG_FILE: "),
        ('colour = "blue"\n', "unknown setting 'colour'"),
        ('port = "abc"\n', "PORT: expected an integer"),
    ],
)
def test_bad_config_file_stops_startup_with_one_line(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load({"CONFIG_FILE": str(config)})
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_chatgpt_api_on_gin_chat_variables():
    settings = load(
        {
            "CHAT_PORT": "8091",
            "CHAT_APIKEY": "sk-seed-001-key-abcd",
            "CHAT_PROXY": "10.1.1.1:7890",
            "CHAT_MODEL": "gpt-4o",
            "CHAT_BOTDESC": "You are Bob.",
            "CHAT_MAXTOKENS": "256",
            "CHAT_TEMPERATURE": "0.7",
            "CHAT_TOPP": "0.9",
            "CHAT_PRESENCEPENALTY": "0.5",
            "CHAT_FREQUENCYPENALTY": "-0.5",
        }
    )
    assert settings.port == 8091 and settings.api_keys[0].masked() == "sk-...abcd"
    assert settings.proxy == "http://10.1.1.1:7890"
    assert (settings.chat_model, settings.bot_desc, settings.chat_max_tokens) == (
        "gpt-4o",
        "You are Bob.",
        256,
    )
    assert (
        settings.chat_temperature,
        settings.chat_top_p,
        settings.chat_presence_penalty,
        settings.chat_frequency_penalty,
    ) == (0.7, 0.9, 0.5, -0.5)


def test_canonical_names_win_over_aliases():
    settings = load({"PORT": "1234", "CHAT_PORT": "8091", "CHAT_PROXY": "h1:1", "PROXY": "h2:2"})
    assert settings.port == 1234 and settings.proxy == "http://h1:1"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("CHAT_TEMPERATURE", "3"),
        ("CHAT_TOPP", "x"),
        ("CHAT_MAXTOKENS", "0"),
        ("CHAT_PROXY", "ftp://h:1"),
        ("SHARED_STATE_URL", "bogus://x"),
    ],
)
def test_invalid_values_name_the_variable(variable, value):
    with pytest.raises(ConfigError, match=f"^{variable}: "):
        load({variable: value})


def test_help_lists_the_common_flags():
    out = subprocess.run(
        [sys.executable, "app.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    for flag in ("--port", "--host", "--route", "--workers", "--config"):
        assert flag in out


def test_flags_win_over_the_environment(live_server, upstream):
    server = live_server(
        "app.py",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        "--route",
        "v9",
        PORT="1",
        ROUTE="api",
        API_KEY="sk-x",
    )
    r = requests.post(server.url + "/v9", json={"user_content": "x"}, timeout=5)
    assert r.json()["current_response"] == "echo: x"


def test_shared_state_url_takes_its_old_name_too():
    assert load({"RATELIMIT_STORAGE_URI": "redis://h:1/0"}).shared_state_url == "redis://h:1/0"
    both = {"SHARED_STATE_URL": "redis://new:1/0", "RATELIMIT_STORAGE_URI": "redis://old:1/0"}
    assert load(both).shared_state_url == "redis://new:1/0"
