"""Token counting (chatservice.tokens) and the context-window table (chatservice.context)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from chatservice.context import ContextWindows, without_oldest_turn
from chatservice.models import ChatRequest
from chatservice.settings import ConfigError, Settings
from chatservice.tokens import TokenCounter, estimate, upper_bound
from tests.conftest import ROOT, settings_from


def no_local(text: str) -> int:
    raise AssertionError("the embedded model's tokenizer is not for this model")


def test_offline_tokenizer_loads_with_no_network(tmp_path):
    # A fresh process whose sockets cannot connect and whose tiktoken cache is empty: the
    # encoding must come from the installed package, not from a download (tiktoken copies
    # the package's file into its cache, which is fine).
    script = textwrap.dedent(
        """
        import socket

        def refuse(*args, **kwargs):
            raise OSError("no network in this test")

        socket.socket.connect = refuse
        socket.create_connection = refuse

        from chatservice.tokens import TokenCounter

        counter = TokenCounter(lambda text: 0)
        print(counter.method("gpt-4o"), counter.count("gpt-4o", "hello world"),
              counter.count("gpt-3.5-turbo", "tiktoken is great!"),
              counter.count("gpt-4o", "你好，世界"), counter.count("gpt-4", "你好，世界"),
              " ".join(sorted(counter._encodings)))
        """
    )
    env = {"TIKTOKEN_CACHE_DIR": str(tmp_path), "PYTHONPATH": str(ROOT), "PATH": "/usr/bin"}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    # cl100k_base's and o200k_base's own counts (OpenAI's cookbook: "tiktoken is great!" is
    # 6 tokens). "你好，世界" tells the two apart: 3 tokens with o200k (the same as
    # bpe-openai's own Rust tokenizer gives), 6 with cl100k.
    assert done.stdout.split() == [
        "tiktoken", "2", "6", "3", "6", "cl100k_base", "o200k_base"
    ]  # fmt: skip
    # The big vocabulary came from bpe-openai's data file, not its 68 MB Python package.
    assert "bpe_openai" not in done.stderr


def test_models_use_their_own_encoding():
    from chatservice.tokens import encoding_name

    for model in ["gpt-4o", "gpt-4o-mini", "openai/gpt-4.1", "o1", "o3-mini", "o4-mini"]:
        assert encoding_name(model) == "o200k_base", model
    for model in ["gpt-4", "gpt-3.5-turbo", "text-embedding-3-small", "text-davinci-003"]:
        assert encoding_name(model) == "cl100k_base", model
    assert encoding_name("llama3.1:8b") is None


def test_methods_by_model():
    counter = TokenCounter(lambda text: 7)
    assert counter.method("gpt-4o-mini") == "tiktoken"
    assert counter.method("openai/gpt-3.5-turbo") == "tiktoken"
    assert counter.method("text-embedding-3-small") == "tiktoken"
    assert counter.method("llama3.1:8b") == "estimate"
    assert counter.method("gpt-4o", embedded=True) == "local"
    assert counter.count("anything", "some text", embedded=True) == 7


def test_approximation_is_three_bytes_a_token_rounded_up():
    counter = TokenCounter(no_local)
    assert counter.count("my-own-model", "abcdefg") == 3  # 7 bytes
    assert estimate("你好") == 2  # 6 bytes
    assert counter.count("my-own-model", "") == 0


def test_messages_add_the_chat_format_overhead():
    counter = TokenCounter(no_local)
    messages = [{"role": "user", "content": "abc"}, {"role": "user", "content": "abc", "name": "x"}]
    one = counter.count("my-own-model", "user\nabc")
    assert counter.count_messages("my-own-model", messages) == 3 + 2 * (3 + one) + 1


def test_upper_bound_is_never_below_the_count():
    counter = TokenCounter(no_local)
    for text in ["hello world " * 50, "你好，世界" * 40, "x", "🙂" * 30]:
        req = ChatRequest(kind="chat", model="gpt-4o", max_tokens=None)
        req.messages = [{"role": "system", "content": "s"}, {"role": "user", "content": text}]
        assert counter.count_request(req) <= upper_bound(req)
        req.model = "unknown-model"
        assert counter.count_request(req) <= upper_bound(req)


def test_the_embedded_models_own_tokenizer(make_app):
    app = make_app(BACKEND="local")
    pipeline = app.extensions["chatservice"].pipeline
    count = pipeline.tokens.count("smollm2-135m-instruct", "Hello world", embedded=True)
    assert count == 2  # SmolLM2's vocabulary: "Hello", " world"


def test_context_window_table_and_overrides():
    windows = ContextWindows(
        settings_from({"CONTEXT_WINDOWS": "gpt-4o=1000,my-model@upstream=500,my-model=700"}),
        TokenCounter(no_local),
    )
    assert windows.window("gpt-4o", "upstream") == 1000
    assert windows.window("gpt-4o-mini", "upstream") == 128_000  # the longest prefix
    assert windows.window("gpt-4-0613", "upstream") == 8_192
    assert windows.window("gpt-3.5-turbo-instruct", "upstream") == 4_096
    assert windows.window("my-model", "upstream") == 500
    assert windows.window("my-model", "other") == 700
    assert windows.window("unheard-of", "upstream") is None
    assert windows.window("unheard-of", "local", embedded=True) == 2048  # LOCAL_CONTEXT_TOKENS


def test_context_windows_in_the_toml_file(tmp_path):
    config = tmp_path / "config.toml"
    config.write_text(
        '[context_windows]\n"my-model" = 32768\n\n[context_windows.upstream]\n"gpt-4" = 4096\n'
    )
    settings = Settings.from_env({"CONFIG_FILE": str(config)}, env_file=None)
    assert settings.context_windows == {"my-model": 32768, "gpt-4@upstream": 4096}


def test_bad_context_windows_stop_startup():
    with pytest.raises(ConfigError, match="CONTEXT_WINDOWS"):
        settings_from({"CONTEXT_WINDOWS": "gpt-4o=lots"})


def test_dropping_the_oldest_turn_keeps_system_prompt_and_newest_turn():
    req = ChatRequest(kind="chat", model="m", max_tokens=None)
    req.messages = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "u1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "u2"},
        {"role": "assistant", "content": "a2"},
        {"role": "user", "content": "u3"},
    ]
    shorter = without_oldest_turn(req)
    assert shorter is not None
    assert [m["content"] for m in shorter.messages] == ["S", "u2", "a2", "u3"]
    shortest = without_oldest_turn(shorter)
    assert shortest is not None
    assert [m["content"] for m in shortest.messages] == ["S", "u3"]
    assert without_oldest_turn(shortest) is None
    assert [m["content"] for m in req.messages][-1] == "u3"  # the original is left alone


def access_lines(caplog) -> dict[str, dict]:
    return {r.access["request_id"]: r.access for r in caplog.records if hasattr(r, "access")}


def test_streams_without_a_usage_chunk_get_counted_usage(make_app, fake, caplog):
    app = make_app(API_KEY="sk-test-configured-0001")
    client = app.test_client()
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hello there"}]}
    with caplog.at_level("INFO", logger="chatservice.access"):
        stream = {**body, "stream": True}
        headers = {"X-Request-ID": "s1"}
        client.post("/api/v1/chat/completions", json=stream, headers=headers, buffered=True)
        # Until something needed tiktoken's encoding (47 MB), usage is the approximation.
        first = access_lines(caplog)["s1"]
        assert first["usage"] == "estimated" and first["completion_tokens"] == 6  # 17 bytes
        counter = app.extensions["chatservice"].pipeline.tokens
        counter.count("gpt-4o", "load it")
        headers = {"X-Request-ID": "s2"}
        client.post("/api/v1/chat/completions", json=stream, headers=headers, buffered=True)
        client.post("/api/v1/chat/completions", json=body, headers={"X-Request-ID": "w"})
    lines = access_lines(caplog)
    assert lines["s2"]["usage"] == "counted"
    assert lines["s2"]["completion_tokens"] == counter.count("gpt-4o", "echo: Hello there")
    assert lines["s2"]["prompt_tokens"] == counter.count_messages("gpt-4o", body["messages"])
    assert lines["w"]["usage"] == "reported"  # the fake's whole answers carry usage


def test_embedded_model_streams_are_counted_with_its_tokenizer(make_app, caplog):
    client = make_app(BACKEND="local").test_client()
    body = {"user_content": "Hi", "max_tokens": 3, "stream": True}
    with caplog.at_level("INFO", logger="chatservice.access"):
        client.post("/api", json=body, headers={"X-Request-ID": "loc"}, buffered=True)
    line = access_lines(caplog)["loc"]
    assert line["usage"] == "counted"
    assert line["prompt_tokens"] > 0 and 0 < line["completion_tokens"] <= 4


def test_accounting_helpers_use_the_apps_counter(make_app):
    from chatservice.models import ChatRequest
    from chatservice.tokens import count_prompt_tokens, count_text_tokens

    app = make_app()
    req = ChatRequest(kind="chat", model="gpt-4o", max_tokens=None)
    req.messages = [{"role": "user", "content": "abcdef"}]
    with app.test_request_context():
        assert count_text_tokens("abcdef") == 2  # the approximation
        assert count_prompt_tokens(req) == 3 + 3 + estimate("user\nabcdef")


def test_a_long_relayed_stream_is_counted_a_batch_of_events_at_a_time(make_app, fake, caplog):
    from tests.fakeupstream import Reply

    app = make_app(API_KEY="sk-test-configured-0001")
    text = " ".join(f"word{i}" for i in range(600))  # about 80 KiB of events, 40 batches
    fake.push(Reply(text=text))
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "stream": True}
    with caplog.at_level("INFO", logger="chatservice.access"):
        response = app.test_client().post(
            "/api/v1/chat/completions", json=body, headers={"X-Request-ID": "long"}, buffered=True
        )
    assert response.status_code == 200 and response.data.count(b"word") == 600
    line = access_lines(caplog)["long"]
    # Counted from the relayed events' text, one estimate per batch (each rounds up once).
    assert line["usage"] == "estimated"
    assert estimate(text) <= line["completion_tokens"] <= estimate(text) + 50


def test_events_text_reads_chat_and_completion_chunks_and_skips_the_rest():
    from chatservice.models import events_text

    chat = b'{"choices":[{"index":0,"delta":{"content":"Hel"},"finish_reason":null}]}'
    completion = b'{"choices":[{"index":0,"text":"lo \\ud800!","finish_reason":null}]}'
    assert events_text([chat, completion, b'{"choices":[]}']) == "Hello \ufffd!"
    assert events_text([chat, b"not json", chat]) == "HelHel"  # one broken event costs its own
