"""Property tests (hypothesis) of the parsers that take client or upstream input.

- The envelope validators and every face's body reader: any JSON value in any field gives a
  request or a 400 ``BadRequest`` whose key has a message, never another exception.
- The JSON body reader itself: any bytes give a JSON object or a 400.
- The SSE decoder of upstream streams: any split of a valid stream into chunks yields the same
  events, the ones that were encoded; arbitrary bytes never raise.
- The WebSocket frame parser: any text or binary frame gives a request or a 400-style error.
- The auth header checks: arbitrary header values give success or a 401; a correct
  ``normal``-mode hash passes exactly once.

Examples are derandomized (the same on every run) and bounded so the module takes seconds.
"""

from __future__ import annotations

import hashlib
import json
import string
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from chatservice import auth, create_app, specs, validation
from chatservice.conversations import NAME_MAX, check_name, iter_examples
from chatservice.errors import BadRequest, ServiceError
from chatservice.models import ChatRequest, is_completion_model
from chatservice.routes import api, chat, chatroom, openai_api, ws
from chatservice.sse import SSEDecoder
from chatservice.state import MemoryState
from chatservice.web import read_json_object
from tests.conftest import ROOT, settings_from

PROPERTIES = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

SETTINGS = settings_from({"STORE_URL": "memory://"})
#: Every stable error key must have a message (the English catalog has them all).
MESSAGE_KEYS = set(json.loads((ROOT / "i18n" / "en.json").read_text(encoding="utf-8")))

# --- strategies ---------------------------------------------------------------------------------

# json.loads gives all of these, NaN and infinities included (Python accepts those literals).
json_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=10,
)
roles = st.sampled_from(["system", "user", "assistant", "tool", "", None, 1])
turns = st.fixed_dictionaries(
    {"role": roles, "content": st.text(max_size=12) | json_values},
    optional={"name": json_values},
)
#: Values that get past the type checks, so the ranges and the later fields are reached too.
plausible = (
    st.text(max_size=20)
    | st.integers(min_value=-3, max_value=5000)
    | st.floats(min_value=-3, max_value=5000)
    | st.lists(turns, max_size=4)
    | st.lists(st.text(max_size=6), max_size=6)
    | st.sampled_from(["gpt-3.5-turbo", "text-davinci-003", "gpt-3.5-turbo-instruct", " "])
)
field_values = json_values | plausible
#: Any characters a header value can hold (HTTP parsing has already removed line breaks).
header_text = st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=80)


def bodies(*fields: str) -> st.SearchStrategy[dict[str, Any]]:
    """JSON objects whose keys are mostly the face's own fields, with any values."""
    keys = st.sampled_from(fields) | st.text(max_size=6)
    return st.dictionaries(keys, field_values, max_size=len(fields) + 2)


def refused(err: BadRequest) -> BadRequest:
    assert err.status == 400
    assert err.key in MESSAGE_KEYS, f"no message for {err.key!r}"
    return err


def outcome(build, *args):
    """``build(*args)``, or the ``BadRequest`` it raised; any other exception fails the test."""
    try:
        return build(*args)
    except BadRequest as err:
        return refused(err)


# --- envelope validators and face bodies --------------------------------------------------------


@PROPERTIES
@given(body=bodies("a", "b"), name=st.sampled_from(["a", "b"]))
def test_field_readers_return_a_value_or_a_bad_request(body: dict[str, Any], name: str) -> None:
    readers = [
        lambda: validation.string(body, name, "b", required=True, non_empty=True),
        lambda: validation.boolean(body, name, False),
        lambda: validation.integer(body, name, 1, 4096, default=7),
        lambda: validation.number(body, name, -2, 2),
        lambda: validation.messages(body, name, "b"),
        lambda: validation.stop_sequences(body, name),
    ]
    for read in readers:
        value = outcome(read)
        if isinstance(value, BadRequest):
            continue
        if read is readers[2]:
            assert type(value) is int and 1 <= value <= 4096
        if read is readers[3] and value is not None:
            assert -2 <= value <= 2


@PROPERTIES
@given(
    body=bodies(
        "user_content",
        "system_content",
        "sys_content",
        "continuous_dialogue",
        "continuous",
        "model",
        "api_key",
        "max_tokens",
        "stream",
        "lang",
    )
)
def test_api_face_body(body: dict[str, Any]) -> None:
    req = outcome(api.build_request, body, SETTINGS)
    if isinstance(req, BadRequest):
        return
    assert isinstance(req, ChatRequest)
    assert specs.CHAT["max_tokens"].minimum <= req.max_tokens <= specs.CHAT["max_tokens"].maximum
    assert all(
        m["role"] in validation.ROLES and isinstance(m["content"], str) for m in req.messages
    )
    assert req.messages[-1] == {"role": "user", "content": body["user_content"]}
    assert (req.kind == "completion") == is_completion_model(req.model)


@PROPERTIES
@given(
    body=bodies(
        "query",
        "messages",
        "model",
        "openai_parameter",
        "temperature",
        "top_p",
        "max_tokens",
        "frequency_penalty",
        "presence_penalty",
        "best_of",
        "stop",
        "stream",
        "lang",
    )
)
def test_chat_face_body(body: dict[str, Any]) -> None:
    req = outcome(chat.build_request, body, SETTINGS)
    if isinstance(req, BadRequest):
        return
    assert 1 <= req.max_tokens <= 4096
    assert req.messages  # the query, the turns or both: never an empty conversation
    if req.kind == "completion":
        assert isinstance(req.prompt, str)
    for field in specs.CHAT.fields:
        if field.name in req.params and field.minimum is not None:
            assert field.minimum <= req.params[field.name] <= field.maximum


@pytest.fixture(scope="module")
def app():
    """An app for the readers that need a request context (nothing here calls a backend)."""
    return create_app(
        settings_from({"STORE_URL": "memory://", "UPSTREAM_BASE_URL": "http://127.0.0.1:9/v1"})
    )


@PROPERTIES
@given(
    body=bodies(
        "messages",
        "prompt",
        "model",
        "stream",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "lang",
    ),
    kind=st.sampled_from(["chat", "completion"]),
    authorization=header_text | st.just("Bearer sk-client-key"),
)
def test_openai_face_body(app, body: dict[str, Any], kind: str, authorization: str) -> None:
    with app.test_request_context(
        "/api/v1/chat/completions", method="POST", headers=Headers({"Authorization": authorization})
    ):
        req = outcome(openai_api.build_request, kind, body, app.extensions["chatservice"].settings)
    if isinstance(req, BadRequest):
        assert "field" in req.params or req.key == "bad_request"
        return
    assert not set(req.params) & openai_api.OWN_FIELDS
    if kind == "chat":
        assert req.messages
    else:
        assert isinstance(req.prompt, str | list) and req.prompt == body["prompt"]


@PROPERTIES
@given(body=bodies("role", "content", "name"))
def test_chat_room_turn(body: dict[str, Any]) -> None:
    turn = outcome(chatroom.read_turn, body)
    if isinstance(turn, BadRequest):
        return
    assert turn["role"] in validation.ROLES
    assert turn["content"].strip()
    req = chatroom.build_request([], turn, SETTINGS, stream=False)
    assert req.messages[-1] == turn


@PROPERTIES
@given(body=bodies("human_name", "ai_name"), examples=field_values)
def test_conversation_fields(body: dict[str, Any], examples: Any) -> None:
    name = outcome(check_name, body, "human_name")
    if not isinstance(name, BadRequest):
        assert 1 <= len(name) <= NAME_MAX and name == name.strip()
        assert not set(name) & set("\r\n:")
    pairs = outcome(lambda: list(iter_examples(examples)))
    if not isinstance(pairs, BadRequest):
        assert all(isinstance(q, str) and isinstance(a, str) for q, a in pairs)


#: Raw bodies: JSON of any shape, deep nesting, and bytes that are not JSON or not UTF-8.
raw_bodies = (
    json_values.map(lambda value: json.dumps(value).encode())
    | bodies("user_content", "query").map(lambda value: json.dumps(value).encode())
    | st.integers(min_value=1, max_value=5000).map(lambda depth: b"[" * depth + b"]" * depth)
    | st.integers(min_value=1, max_value=5000).map(lambda depth: b'{"a":' * depth)
    | st.binary(max_size=40)
)


@PROPERTIES
@given(raw=raw_bodies)
def test_json_body_reader(app, raw: bytes) -> None:
    with app.test_request_context("/api", method="POST", data=raw):
        body = outcome(read_json_object)
    assert isinstance(body, dict | BadRequest)


# --- SSE decoding of upstream streams ------------------------------------------------------------

event_data = st.lists(
    st.text(alphabet=st.characters(exclude_characters="\r\n"), max_size=15), min_size=1, max_size=3
)


@st.composite
def sse_streams(draw) -> tuple[bytes, list[str]]:
    """A valid stream (comments, other fields, multi-line data) and its events' data.

    One line end per stream: a CR line end followed by an LF blank line would be one CRLF.
    """
    end = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    events = draw(st.lists(event_data, max_size=5))
    parts = []
    for lines in events:
        if draw(st.booleans()):
            parts.append(": keep-alive" + end)
        if draw(st.booleans()):
            parts.append("event: message" + end)
        for line in lines:
            parts.append(("data: " if draw(st.booleans()) else "data:") + line + end)
        parts.append(end)
    # A comment last: a bare CR at the very end could be half of a CRLF, so the decoder holds
    # the last event until the next byte.
    parts.append(":\n")
    return "".join(parts).encode("utf-8"), ["\n".join(lines) for lines in events]


def decode(chunks: list[bytes]) -> list[str]:
    decoder = SSEDecoder()
    events = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    return events


@PROPERTIES
@given(stream=sse_streams(), cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=12))
def test_sse_any_split_gives_the_same_events(
    stream: tuple[bytes, list[str]], cuts: list[int]
) -> None:
    raw, expected = stream
    points = sorted({min(cut, len(raw)) for cut in cuts})
    chunks = [raw[start:end] for start, end in zip([0, *points], [*points, len(raw)], strict=True)]
    assert decode([raw]) == expected
    assert decode(chunks) == expected
    assert decode([bytes([byte]) for byte in raw]) == expected


@PROPERTIES
@given(chunks=st.lists(st.binary(max_size=30), max_size=10))
def test_sse_arbitrary_bytes_never_raise(chunks: list[bytes]) -> None:
    assert all(isinstance(event, str) for event in decode(chunks))


# --- WebSocket frames ---------------------------------------------------------------------------

frames = (
    st.text(max_size=30)
    | st.binary(max_size=30)
    | json_values.map(json.dumps)
    | st.fixed_dictionaries(
        {"seq": json_values | st.text(min_size=1, max_size=5)},
        optional={
            "data": bodies(
                "query",
                "messages",
                "model",
                "temperature",
                "max_tokens",
                "stop",
                "origin_stream",
                "lang",
            )
            | json_values
        },
    ).map(json.dumps)
    | st.integers(min_value=1, max_value=5000).map(lambda depth: "[" * depth)
)


@PROPERTIES
@given(raw=frames)
def test_websocket_frame_gives_a_request_or_a_400(raw: str | bytes) -> None:
    try:
        message, problem = ws._parse(raw)  # noqa: SLF001 - the face's frame parser
    except BadRequest as err:  # pragma: no cover - _parse returns its errors
        refused(err)
        return
    if message is not None:
        assert isinstance(ws._known_seq(message), str)  # noqa: SLF001
        assert isinstance(ws._frame_lang(message, "en"), str)  # noqa: SLF001
    if problem is not None:
        refused(problem)
        return
    assert message is not None
    # What the face does with a well-formed frame: the /v1/chat body, then origin_stream.
    req = outcome(chat.build_request, message["data"], SETTINGS)
    if not isinstance(req, BadRequest):
        outcome(validation.boolean, message["data"], "origin_stream", True)


# --- auth headers -------------------------------------------------------------------------------

SECRETS = ["t0ken-0001", "tök€n with spaces", "x"]
header_values = header_text | st.sampled_from(["", " ", "Bearer", "Bearer ", "bearer x"])
header_sets = st.dictionaries(
    st.sampled_from(["token", "uuid", "Authorization", "Token", "UUID", "x-other"]),
    header_values,
    max_size=4,
)


@PROPERTIES
@given(
    headers=header_sets,
    mode=st.sampled_from(["none", "simple", "normal"]),
    secret=st.sampled_from(SECRETS),
    bearer=st.booleans(),
)
def test_auth_headers_pass_or_401(headers, mode: str, secret: str, bearer: bool) -> None:
    settings = settings_from({"AUTH_MODE": mode, "AUTH_TOKEN": secret, "STORE_URL": "memory://"})
    try:
        auth.authenticate(settings, MemoryState(), Headers(headers), bearer=bearer)
    except ServiceError as err:
        assert err.status == 401, err
        assert err.key in MESSAGE_KEYS
        return
    # Let through: no auth, or the right credentials really were there.
    sent = Headers(headers)
    if mode == "simple":
        bearer_value = sent.get("Authorization", "").partition(" ")[2].strip()
        assert sent.get("token") == secret or (bearer and bearer_value == secret)
    if mode == "normal":
        digest = hashlib.sha256((secret + sent.get("uuid", "")).encode("utf-8")).hexdigest()
        assert sent.get("token", "").lower() == digest


uuids = st.text(alphabet=string.printable[:95], min_size=1, max_size=64)


@PROPERTIES
@given(uuid=uuids, secret=st.sampled_from(SECRETS), upper=st.booleans())
def test_normal_auth_correct_hash_passes_once(uuid: str, secret: str, upper: bool) -> None:
    settings = settings_from(
        {"AUTH_MODE": "normal", "AUTH_TOKEN": secret, "STORE_URL": "memory://"}
    )
    store = MemoryState()
    digest = hashlib.sha256((secret + uuid).encode("utf-8")).hexdigest()
    headers = Headers({"token": digest.upper() if upper else digest, "uuid": uuid})
    auth.authenticate(settings, store, headers)
    with pytest.raises(ServiceError) as again:
        auth.authenticate(settings, store, headers)
    assert (again.value.status, again.value.key) == (401, "auth_replayed")


@PROPERTIES
@given(uuid=uuids, secret=st.sampled_from(SECRETS), wrong=header_text.filter(bool))
def test_normal_auth_wrong_hash_fails_and_burns_nothing(uuid: str, secret: str, wrong: str) -> None:
    settings = settings_from(
        {"AUTH_MODE": "normal", "AUTH_TOKEN": secret, "STORE_URL": "memory://"}
    )
    store = MemoryState()
    digest = hashlib.sha256((secret + uuid).encode("utf-8")).hexdigest()
    if wrong.lower() == digest:
        return
    with pytest.raises(ServiceError) as refused_:
        auth.authenticate(settings, store, Headers({"token": wrong, "uuid": uuid}))
    assert refused_.value.status == 401
    # The uuid was not recorded, so the right hash still works afterwards.
    auth.authenticate(settings, store, Headers({"token": digest, "uuid": uuid}))
