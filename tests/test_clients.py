"""The clients people use against the OpenAI face: openai-python, langchain-openai, instructor.

Each runs against a real gunicorn server twice: answered by the embedded model (no key, the
placeholder ``sk-xxx`` that tools insist on) and by the fake upstream on loopback. Every
client's base URL is the loopback server; none reaches the network.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import instructor
import openai
import pytest
from langchain_core.messages import HumanMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from pydantic import BaseModel

from tests.conftest import LiveServer
from tests.fakeupstream import FakeUpstream, Reply

LOCAL_ID = "smollm2-135m-instruct"
PLACEHOLDER = "sk-xxx"
UPSTREAM_MODEL = "gpt-4o-mini"


class City(BaseModel):
    name: str
    country: str


WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


@tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    return "sunny"


def _server(tmp: Path, name: str, **env: str) -> Iterator[LiveServer]:
    server = LiveServer({"STORE_URL": "memory://", **env}, tmp / f"{name}.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def keyless(tmp_path_factory) -> Iterator[LiveServer]:
    """A keyless install with OpenAI's API as its (unreachable in tests) upstream: the
    placeholder key is not sent there, the embedded model answers."""
    tmp = tmp_path_factory.mktemp("keyless")
    yield from _server(tmp, "keyless", UPSTREAM_BASE_URL="https://api.openai.com/v1")


@pytest.fixture(scope="module")
def proxied(tmp_path_factory, upstream: FakeUpstream) -> Iterator[LiveServer]:
    """A server whose upstream is the fake one, with a configured key."""
    tmp = tmp_path_factory.mktemp("proxied")
    yield from _server(
        tmp, "proxied", UPSTREAM_BASE_URL=upstream.url, API_KEY="sk-configured-0001",
        UPSTREAM_RETRIES="0",
    )  # fmt: skip


def sdk(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url + "/api/v1", api_key=PLACEHOLDER, max_retries=0, timeout=120
    )


def langchain(server: LiveServer, model: str, **options) -> ChatOpenAI:
    return ChatOpenAI(
        base_url=server.url + "/api/v1", api_key=PLACEHOLDER, model=model, max_retries=0,
        timeout=120, **options,
    )  # fmt: skip


def tool_call_reply(name: str, arguments: dict) -> Reply:
    """The fake upstream calls ``name``, as OpenAI answers a forced tool choice."""
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    }
    return Reply(
        body={
            "id": "fake-tools",
            "object": "chat.completion",
            "created": 1,
            "model": UPSTREAM_MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": None, "tool_calls": [call]},
                    "finish_reason": "tool_calls",
                }
            ],
            "usage": {"prompt_tokens": 9, "completion_tokens": 9, "total_tokens": 18},
        }
    )


# --- the embedded model -------------------------------------------------------------------


def test_placeholder_key_gets_the_embedded_model_and_its_model_list(keyless):
    client = sdk(keyless)
    assert [model.id for model in client.models.list()] == [LOCAL_ID]
    answer = client.chat.completions.create(
        model=LOCAL_ID, messages=[{"role": "user", "content": "Say hi"}], max_tokens=6
    )
    assert answer.model == LOCAL_ID and answer.choices[0].message.content


def test_openai_stream_with_usage_on_the_embedded_model(keyless):
    chunks = list(
        sdk(keyless).chat.completions.create(
            model=LOCAL_ID,
            messages=[{"role": "user", "content": [{"type": "text", "text": "Say hi"}]}],
            max_tokens=6,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices)
    assert text
    assert 0 < last.usage.completion_tokens <= 6 and last.usage.prompt_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_openai_parse_with_a_pydantic_model_on_the_embedded_model(keyless):
    answer = sdk(keyless).chat.completions.parse(
        model=LOCAL_ID,
        messages=[{"role": "user", "content": "Name a city in France as JSON."}],
        response_format=City,
        max_tokens=60,
        temperature=0,
    )
    parsed = answer.choices[0].message.parsed
    assert isinstance(parsed, City)


def test_openai_tools_on_the_embedded_model(keyless):
    answer = sdk(keyless).chat.completions.create(
        model=LOCAL_ID,
        messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        max_tokens=30,
        temperature=0,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)


def test_openai_refuses_what_the_embedded_model_cannot_do(keyless):
    client = sdk(keyless)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=LOCAL_ID,
            messages=[{"role": "user", "content": "hi"}],
            logit_bias={"50256": -100},
        )
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", "logit_bias")
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=LOCAL_ID, messages=[{"role": "user", "content": [image]}]
        )
    assert (caught.value.code, caught.value.param) == (
        "unsupported_parameter",
        "messages[0].content[0]",
    )


def test_langchain_on_the_embedded_model(keyless):
    chat = langchain(keyless, LOCAL_ID, max_tokens=60, temperature=0)
    # Content as a list of parts, as LangChain sends multimodal-style messages.
    reply = langchain(keyless, LOCAL_ID, max_tokens=6).invoke(
        [HumanMessage(content=[{"type": "text", "text": "Say hi"}])]
    )
    assert reply.content
    city = chat.with_structured_output(City).invoke("Name a city in France.")
    assert isinstance(city, City)
    called = chat.bind_tools([get_weather], tool_choice="get_weather").invoke(
        "What is the weather in Paris?"
    )
    assert called.tool_calls[0]["name"] == "get_weather"
    assert isinstance(called.tool_calls[0]["args"]["city"], str)


def test_instructor_on_the_embedded_model(keyless):
    client = instructor.from_openai(sdk(keyless))
    city = client.chat.completions.create(
        model=LOCAL_ID,
        response_model=City,
        messages=[{"role": "user", "content": "Name a city in France."}],
        max_tokens=60,
        temperature=0,
        max_retries=0,
    )
    assert isinstance(city, City)


# --- the fake upstream --------------------------------------------------------------------


def test_openai_chat_and_stream_with_usage_through_the_upstream(proxied, fake):
    client = sdk(proxied)
    answer = client.chat.completions.create(
        model=UPSTREAM_MODEL, messages=[{"role": "user", "content": "Hello"}]
    )
    assert answer.choices[0].message.content == "echo: Hello"
    chunks = list(
        client.chat.completions.create(
            model=UPSTREAM_MODEL,
            messages=[{"role": "user", "content": "Hello there"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3
    assert fake.received[-1].json["stream_options"] == {"include_usage": True}


def test_openai_parse_and_tools_through_the_upstream(proxied, fake):
    client = sdk(proxied)
    fake.push(Reply(text=json.dumps({"name": "Lyon", "country": "France"})))
    answer = client.chat.completions.parse(
        model=UPSTREAM_MODEL, messages=[{"role": "user", "content": "A city"}], response_format=City
    )
    assert answer.choices[0].message.parsed == City(name="Lyon", country="France")
    sent = fake.received[-1].json["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"
    fake.push(tool_call_reply("get_weather", {"city": "Paris"}))
    answer = client.chat.completions.create(
        model=UPSTREAM_MODEL,
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        tools=[WEATHER_TOOL],
        tool_choice="required",
    )
    call = answer.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == (
        "get_weather",
        {"city": "Paris"},
    )
    assert fake.received[-1].json["tools"] == [WEATHER_TOOL]
    # The next turn: null content with tool_calls, and the tool's answer.
    fake.push(Reply(text="It is sunny."))
    follow_up = client.chat.completions.create(
        model=UPSTREAM_MODEL,
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            answer.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny"},
        ],
        tools=[WEATHER_TOOL],
    )
    assert follow_up.choices[0].message.content == "It is sunny."


def test_langchain_through_the_upstream(proxied, fake):
    chat = langchain(proxied, UPSTREAM_MODEL)
    reply = chat.invoke([HumanMessage(content=[{"type": "text", "text": "Hello"}])])
    assert reply.content == "echo: [{'type': 'text', 'text': 'Hello'}]"  # passed on as a list
    fake.push(Reply(text=json.dumps({"name": "Nice", "country": "France"})))
    assert chat.with_structured_output(City).invoke("A city") == City(name="Nice", country="France")
    fake.push(tool_call_reply("get_weather", {"city": "Paris"}))
    called = chat.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather?")
    assert called.tool_calls[0]["name"] == "get_weather"
    assert called.tool_calls[0]["args"] == {"city": "Paris"}


def test_instructor_through_the_upstream(proxied, fake):
    fake.push(tool_call_reply("City", {"name": "Lille", "country": "France"}))
    client = instructor.from_openai(sdk(proxied))
    city = client.chat.completions.create(
        model=UPSTREAM_MODEL,
        response_model=City,
        messages=[{"role": "user", "content": "A city"}],
        max_retries=0,
    )
    assert city.model_dump() == {"name": "Lille", "country": "France"}
    assert fake.received[-1].json["tool_choice"]["function"]["name"] == "City"
