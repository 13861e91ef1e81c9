"""The wrapper services' own client scripts and example requests (the Docker ChatGPT API
platform's scripts, chatgpt-service's README requests) work unchanged against a live server."""

from __future__ import annotations

import subprocess
import sys

import requests

from tests.conftest import ROOT

SCRIPTS = ROOT / "tests" / "seed_clients"


def run_script(name: str, url: str, stdin: str, api_key: str = "sk-seed-user") -> str:
    env = {"SEED_URL": url, "SEED_API_KEY": api_key, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, str(SCRIPTS / name)],
        input=stdin,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_continuous_dialogue_script(live_server, upstream):
    server = live_server()
    out = run_script(
        "continuous_dialogue.py",
        server.url + "/api",
        "You are terse.\nFirst question\nSecond question\nexit\n",
    )
    assert "ChatGPT> echo: First question" in out
    assert "ChatGPT> echo: Second question" in out
    assert "program exited" in out
    received = upstream.wait_for(2)
    assert [r.headers["Authorization"] for r in received] == ["Bearer sk-seed-user"] * 2
    assert received[0].json["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "First question"},
    ]
    assert received[0].json["max_tokens"] == 3000


def test_single_question_script(live_server, upstream):
    server = live_server()
    out = run_script("single_question.py", server.url + "/api", "\nHello there\n")
    assert out.strip().endswith("ChatGPT> echo: Hello there")
    # An empty system prompt sends no empty system message.
    assert upstream.wait_for(1)[0].json["messages"] == [{"role": "user", "content": "Hello there"}]


def test_single_question_script_with_embedded_model(live_server):
    server = live_server(BACKEND="local")
    out = run_script("single_question.py", server.url + "/api", "Be brief.\nName a color.\n")
    answer = out.split("ChatGPT> ", 1)[1]
    assert answer.strip()


def test_chatgpt_service_example_requests(live_server, upstream):
    server = live_server(API_KEY="sk-configured")
    story = requests.post(
        server.url + "/api/v1/chat",
        timeout=10,
        json={"query": "讲个故事", "model": "gpt-3.5-turbo", "openai_parameter": True},
    ).json()
    assert story == {
        "code": 0,
        "msg": "ok",
        "data": {
            "response": "echo: 讲个故事",
            "finish_reason": "stop",
            "model": "gpt-3.5-turbo",
            "usage": story["data"]["usage"],
        },
    }
    chat = requests.post(
        server.url + "/api/v1/chat",
        timeout=10,
        json={
            "messages": [
                {"role": "system", "content": "AI只能用中文回复\n这是Human和AI之间的对话"},
                {"role": "user", "content": "你是哪里人？"},
                {"role": "assistant", "content": "我是北京人。"},
                {"role": "user", "content": "讲个故事"},
            ],
            "model": "gpt-3.5-turbo",
            "openai_parameter": True,
        },
    ).json()
    assert chat["code"] == 0 and chat["data"]["response"] == "echo: 讲个故事"
