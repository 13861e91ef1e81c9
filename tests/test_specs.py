"""The request specs are the one description of each JSON body: the OpenAPI document's body
schemas are built from them (not copies), the faces enforce the ranges they state, and the
README's field tables say what they say."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

from chatservice import openai_fields, specs
from chatservice.openapi import build_document
from chatservice.specs import BodyField, Spec
from tests.conftest import settings_from

ROOT = Path(__file__).resolve().parent.parent

#: ``components/schemas`` name -> (module, attribute) of the spec it is built from.
BODIES = {
    "ApiRequest": (specs, "API"),
    "ChatRequest": (specs, "CHAT"),
    "RoomTurn": (specs, "ROOM_TURN"),
    "TurboCreate": (specs, "TURBO_CREATE"),
    "RolePlayCreate": (specs, "ROLE_PLAY_CREATE"),
    "QuickAnswer": (specs, "QUICK_ANSWER"),
    "ChatCompletionRequest": (openai_fields, "CHAT_COMPLETION"),
    "CompletionRequest": (openai_fields, "COMPLETION"),
    "EmbeddingRequest": (openai_fields, "EMBEDDING"),
}
#: Schemas that are a spec's JSON Schema as it is.
PARTS = {
    "RoleName": (specs, "ROLE_NAME"),
    "ChatMessage": (openai_fields, "MESSAGE"),
}


def _schemas() -> dict[str, Any]:
    return build_document(settings_from({}))["components"]["schemas"]


def _without_description(schema: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in schema.items() if key != "description"}


@pytest.mark.parametrize("name", [*BODIES, *PARTS])
def test_each_body_schema_is_its_spec(name: str) -> None:
    module, attribute = {**BODIES, **PARTS}[name]
    spec = getattr(module, attribute)
    expected = spec.schema() if isinstance(spec, Spec) else spec
    # The description of the body as a whole may be the document's own prose.
    assert _without_description(_schemas()[name]) == _without_description(expected)


@pytest.mark.parametrize("name", BODIES)
def test_each_body_schema_follows_its_spec(name: str, monkeypatch) -> None:
    # Not a copy: a field added to the spec appears in the document, a field's range changes.
    module, attribute = BODIES[name]
    spec: Spec = getattr(module, attribute)
    probe = BodyField("probe_field", "integer", minimum=3, maximum=9)
    monkeypatch.setattr(module, attribute, dataclasses.replace(spec, fields=(*spec.fields, probe)))
    properties = _schemas()[name]["properties"]
    assert properties["probe_field"] == {"type": ["integer", "null"], "minimum": 3, "maximum": 9}


def _ranged(spec: Spec) -> list[BodyField]:
    return [
        field
        for field in spec.fields
        if field.kind in ("integer", "number") and field.minimum is not None
    ]


def _show(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


# (face path, a valid body, the spec, where the error key is, where the field is)
FACES = [
    ("/api", {"user_content": "hi"}, specs.API, ("data", "error"), None),
    ("/api/v1/chat", {"query": "hi"}, specs.CHAT, ("data", "error"), None),
    (
        "/api/v1/chat/completions",
        {"messages": [{"role": "user", "content": "hi"}]},
        openai_fields.CHAT_COMPLETION,
        ("error", "code"),
        ("error", "param"),
    ),
    (
        "/api/v1/completions",
        {"prompt": "hi"},
        openai_fields.COMPLETION,
        ("error", "code"),
        ("error", "param"),
    ),
]


@pytest.mark.parametrize(
    ("path", "body", "spec", "key_at", "field_at"),
    FACES,
    ids=[face[0] for face in FACES],
)
def test_faces_enforce_the_spec_ranges(client, path, body, spec, key_at, field_at) -> None:
    for field in _ranged(spec):
        for value in (field.minimum - 1, field.maximum + 1):
            response = client.post(path, json={**body, field.name: value})
            assert response.status_code == 400, (field.name, value, response.get_json())
            answer = response.get_json()
            assert answer[key_at[0]][key_at[1]] == "out_of_range", field.name
            if field_at is not None:
                assert answer[field_at[0]][field_at[1]] == field.name
            text = str(answer)
            assert _show(field.minimum) in text and _show(field.maximum) in text, text


def test_stop_lists_are_bounded_by_the_spec(client) -> None:
    for path, body, spec, key_at, _ in FACES:
        if "stop" not in {field.name for field in spec.fields}:
            continue
        limit = spec["stop"].max_items
        ok = client.post(path, json={**body, "stop": ["x"] * limit})
        assert ok.status_code == 200, (path, ok.get_json())
        over = client.post(path, json={**body, "stop": ["x"] * (limit + 1)})
        assert over.status_code == 400
        answer = over.get_json()
        assert answer[key_at[0]][key_at[1]] == "invalid_stop", path


# --- the README's field tables ---------------------------------------------------------------

#: README section heading (its start) -> the specs its field table describes.
README_TABLES = {
    "### `POST /api`:": (specs.API,),
    "### `POST /api/v1/chat`:": (specs.CHAT,),
    "### `/api/v1/chat/completions`": (
        openai_fields.CHAT_COMPLETION,
        openai_fields.COMPLETION,
        openai_fields.EMBEDDING,
    ),
    "### `/api/chat-room`:": (specs.ROOM_TURN,),
    "### `/api/chatgpt/...`:": (
        specs.TURBO_CREATE,
        specs.ROLE_PLAY_CREATE,
        specs.QUICK_ANSWER,
    ),
}
_BOUND = r"-?(?:2\^63(?:-1)?|\d+(?:\.\d+)?)"
_RANGE = re.compile(rf"({_BOUND})\.\.({_BOUND})")
_DEFAULT = re.compile(r"default `?([^`,;)\s]+)`?")


def _section(readme: str, heading: str) -> str:
    start = readme.index("\n" + heading)
    end = readme.find("\n#", start + 1)
    return readme[start:end]


def _rows(section: str) -> list[tuple[list[str], str]]:
    """Each table row's field names (backticked, first cell) and the rest of the row."""
    rows = []
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("|") or len(cells) < 2 or cells[0] in ("field", "---"):
            continue
        rows.append((re.findall(r"`([^`]+)`", cells[0]), " | ".join(cells[1:])))
    return rows


def _number(text: str) -> int | float:
    """A bound as the README writes it: ``-2``, ``0.5``, ``-2^63``, ``2^63-1``."""
    if "^" in text:
        sign = -1 if text.startswith("-") else 1
        return sign * 2**63 - (1 if text.endswith("-1") else 0)
    return float(text)


@pytest.mark.parametrize("heading", README_TABLES)
def test_readme_field_tables_match_the_specs(heading: str) -> None:
    section = _section((ROOT / "README.md").read_text(encoding="utf-8"), heading)
    rows = _rows(section)
    assert rows, f"no field table under {heading}"
    fields: dict[str, BodyField] = {}
    required: dict[str, set[bool]] = {}
    for spec in README_TABLES[heading]:
        for field in spec.fields:
            fields.setdefault(field.name, field)
            required.setdefault(field.name, set()).add(field.required)
    documented = set()
    for names, rest in rows:
        field = fields.get(names[0])
        assert field is not None, f"{heading}: the README lists `{names[0]}`, no spec has it"
        # Every spelling, in the spec's order.
        assert tuple(names) == (field.name, *field.aliases), (heading, names)
        documented.add(field.name)
        # "required"/"optional" where every request with the field agrees on it.
        says = rest.split(" | ")[0]
        if len(required[field.name]) == 1 and ("required" in says or "optional" in says):
            assert ("required" in says) == field.required, (heading, names)
        found = _RANGE.search(rest)
        if field.kind in ("integer", "number") and field.minimum is not None:
            assert found, f"{heading}: `{field.name}` states no range"
            assert (_number(found[1]), _number(found[2])) == (field.minimum, field.maximum)
        elif field.kind == "stop":
            assert f"up to {field.max_items}" in rest, (heading, field.name)
        default = _DEFAULT.search(rest)
        if default and field.default is not None and field.kind != "string":
            assert default[1] == str(field.default).lower(), (heading, field.name, default[1])
    missing = {name for name, field in fields.items() if field.read} - documented
    assert not missing, f"{heading}: the README's table misses {sorted(missing)}"


def test_null_encoding_format_counts_as_absent(client) -> None:
    # null means absent on every field; any other value but `float`/`base64` is refused.
    body = {"model": "text-embedding-3-small", "input": "hi"}
    assert (
        client.post("/api/v1/embeddings", json={**body, "encoding_format": None}).status_code == 200
    )
    refused = client.post("/api/v1/embeddings", json={**body, "encoding_format": 5})
    assert refused.get_json()["error"]["code"] == "invalid_encoding_format"


def _read_or_error(read: Any, body: dict[str, Any]) -> Any:
    try:
        return read(body)
    except Exception as exc:  # noqa: BLE001 - compared below, key and parameters
        return (type(exc).__name__, getattr(exc, "key", None), getattr(exc, "params", None))


@pytest.mark.parametrize("name", BODIES)
def test_read_gives_what_each_field_reads(name: str) -> None:
    # Spec.read skips the readers of absent optional fields: the values (and the first
    # error) must be exactly those of reading every field in the table's order.
    module, attribute = BODIES[name]
    spec: Spec = getattr(module, attribute)

    def one_by_one(body: dict[str, Any]) -> dict[str, Any]:
        return {field.name: field.value(body) for field in spec.fields if field.read}

    names = [name for field in spec.fields for name in (field.name, *field.aliases)]
    typical = {
        "model": "gpt-4o",
        "messages": [{"role": "user", "content": "hi"}],
        "prompt": "hi",
        "input": "hi",
        "user_content": "hi",
        "query": "hi",
    }
    bodies = [{}, typical, {name: None for name in names}]
    bodies += [{**typical, name: None} for name in names]
    bodies += [{**typical, name: "x"} for name in names]
    bodies += [{**typical, name: 3} for name in names]
    for body in bodies:
        assert _read_or_error(spec.read, body) == _read_or_error(one_by_one, body), body
