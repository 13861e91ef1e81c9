"""The OpenAPI document (GET /openapi.json) and its page (GET /docs).

The document must cover every route the app serves, and only those, under every setting that
changes the routes (ROUTE, PLAYGROUND); it must be a valid OpenAPI 3.1 document whose schemas
are valid JSON Schema 2020-12 and whose references resolve; security must follow AUTH_MODE.
Both views are public: no rate limit, no AUTH_MODE.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import jsonschema_rs
import pytest
import schemathesis

from chatservice import openai_fields, specs
from chatservice.openapi import build_document
from chatservice.routes.docs import DOCS_DIR
from tests.conftest import ROOT, settings_from

METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE"}

#: Settings that change which routes exist, or where.
ROUTE_SETTINGS = [
    pytest.param({}, id="defaults"),
    pytest.param({"PLAYGROUND": "1", "ADMIN_TOKEN": "admin-secret-0001"}, id="everything-on"),
    pytest.param({"PLAYGROUND": "0"}, id="no-playground"),
    pytest.param({"ROUTE": ""}, id="empty-route"),
    pytest.param({"ROUTE": "chat", "PLAYGROUND": "1"}, id="other-route"),
    pytest.param({"AUTH_MODE": "normal", "AUTH_TOKEN": "t0ken-0001"}, id="normal-auth"),
    pytest.param({"AUTH_MODE": "keys", "ADMIN_TOKEN": "admin-secret-0002"}, id="keys-auth"),
]


def _flask_to_openapi(rule: str) -> str:
    # <model_id>, <path:model_id> -> {model_id}
    path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)
    # Every POST path also answers with a trailing slash (routes.add_post_rule); the document
    # names each path once.
    return path.rstrip("/") or "/"


def _served_operations(app) -> set[tuple[str, str]]:
    operations = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.endswith(".static"):
            continue  # the assets of the pages, files rather than operations
        for method in rule.methods & METHODS:
            operations.add((_flask_to_openapi(rule.rule), method))
    return operations


def _documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method.upper())
        for path, item in document["paths"].items()
        for method in item
        if method.upper() in METHODS
    }


@pytest.mark.parametrize("env", ROUTE_SETTINGS)
def test_every_route_is_documented_and_every_documented_route_exists(make_app, env) -> None:
    app = make_app(**env)
    document = app.test_client().get("/openapi.json").get_json()
    served = _served_operations(app)
    documented = _documented_operations(document)
    assert served - documented == set(), "routes missing from the document"
    assert documented - served == set(), "documented operations the app does not serve"


def test_paths_follow_route(make_app) -> None:
    paths = make_app(ROUTE="chat").test_client().get("/openapi.json").get_json()["paths"]
    assert "/chat" in paths and "/chat/v1/chat/completions" in paths
    assert "/healthz" in paths and "/openapi.json" in paths and "/docs" in paths
    assert not any(path.startswith("/api") for path in paths)
    empty = make_app(ROUTE="").test_client().get("/openapi.json").get_json()["paths"]
    assert "post" in empty["/"] and "/v1/chat" in empty


@pytest.mark.parametrize("env", ROUTE_SETTINGS)
def test_document_is_valid_openapi_3_1(env) -> None:
    document = build_document(settings_from(env))
    assert document["openapi"].startswith("3.1.")
    # schemathesis validates against the OpenAPI 3.1 schema of the specification.
    schemathesis.openapi.from_dict(document).validate()


def _walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{where}/{index}")


def _schemas(document: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for name, schema in document["components"]["schemas"].items():
        yield f"#/components/schemas/{name}", schema
    for where, node in _walk(document["paths"], "#/paths"):
        if isinstance(node, dict) and isinstance(node.get("schema"), dict):
            yield where + "/schema", node["schema"]


def test_schemas_are_valid_json_schema_and_references_resolve() -> None:
    document = build_document(settings_from({"PLAYGROUND": "1"}))
    for where, schema in _schemas(document):
        # Against the 2020-12 meta-schema, then compiled (patterns, formats) with its
        # "#/components/..." references resolvable: a bad keyword, regex or reference raises.
        jsonschema_rs.meta.validate(schema)
        root = {"components": document["components"], "allOf": [schema]}
        validator = jsonschema_rs.Draft202012Validator(root)
        assert validator is not None, where
    for where, node in _walk(document):
        if isinstance(node, dict) and isinstance(node.get("$ref"), str):
            target: Any = document
            for part in node["$ref"].removeprefix("#/").split("/"):
                assert isinstance(target, dict) and part in target, f"{where}: {node['$ref']}"
                target = target[part]


def test_operations_are_well_formed() -> None:
    document = build_document(settings_from({"PLAYGROUND": "1", "AUTH_MODE": "none"}))
    tags = {tag["name"] for tag in document["tags"]}
    ids = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            label = f"{method.upper()} {path}"
            ids.append(operation["operationId"])
            assert set(operation["tags"]) <= tags, label
            assert operation["responses"], label
            declared = {
                parameter["name"]
                for parameter in operation.get("parameters", [])
                if parameter.get("in") == "path"
            }
            assert declared == set(re.findall(r"\{([^}]+)\}", path)), label
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def _security_of(document: dict[str, Any], path: str, method: str = "post") -> Any:
    return document["paths"][path][method].get("security")


def test_security_follows_auth_mode() -> None:
    none = build_document(settings_from({}))
    assert _security_of(none, "/api") is None
    assert _security_of(none, "/api/v1/chat/completions") == [{}, {"bearer": []}]
    assert _security_of(none, "/api/admin/keys", "get") == [{"adminToken": []}]

    simple = build_document(settings_from({"AUTH_MODE": "simple", "AUTH_TOKEN": "t0ken-0001"}))
    for path in ("/api", "/api/v1/chat", "/api/chat-room", "/api/chatgpt/chat"):
        assert _security_of(simple, path) == [{"token": []}], path
    assert _security_of(simple, "/api/ws", "get") == [{"token": []}]
    assert _security_of(simple, "/api/v1/completions") == [{"token": []}, {"bearer": []}]
    # Shared conversations stay open to anyone, as in Alice ChatGPT.
    assert _security_of(simple, "/api/chatgpt/share/{share_id}", "get") == []
    assert _security_of(simple, "/healthz", "get") is None

    normal = build_document(settings_from({"AUTH_MODE": "normal", "AUTH_TOKEN": "t0ken-0001"}))
    assert _security_of(normal, "/api") == [{"token": [], "uuid": []}]
    assert _security_of(normal, "/api/v1/chat/completions") == [{"token": [], "uuid": []}]
    schemes = normal["components"]["securitySchemes"]
    assert schemes["token"] == {**schemes["token"], "type": "apiKey", "in": "header"}
    assert schemes["uuid"]["name"] == "uuid"
    assert schemes["bearer"]["scheme"] == "bearer"


def test_request_constraints_match_the_validators() -> None:
    # The document states the ranges the faces read with (tests/test_specs.py checks whole
    # schemas and that the faces enforce them); the fuzz tests check the rest live.
    schemas = build_document(settings_from({}))["components"]["schemas"]
    bodies = {
        "ApiRequest": specs.API,
        "ChatRequest": specs.CHAT,
        "ChatCompletionRequest": openai_fields.CHAT_COMPLETION,
        "CompletionRequest": openai_fields.COMPLETION,
    }
    for name, spec in bodies.items():
        properties = schemas[name]["properties"]
        assert schemas[name].get("required", []) == [f.name for f in spec.fields if f.required]
        for field in spec.fields:
            if field.minimum is not None:
                bounds = (field.minimum, field.maximum)
                assert (
                    properties[field.name]["minimum"],
                    properties[field.name]["maximum"],
                ) == bounds
            if field.kind == "stop":
                assert properties[field.name]["maxItems"] == field.max_items
    assert schemas["ApiRequest"]["required"] == ["user_content"]
    assert schemas["ChatCompletionRequest"]["required"] == ["messages"]
    assert schemas["CompletionRequest"]["required"] == ["prompt"]


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.inline_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "script":
            if found.get("src"):
                self.links.append(found["src"] or "")
            else:
                self.inline_script = True
        if tag == "link" and found.get("rel") == "stylesheet":
            self.links.append(found.get("href") or "")


def test_docs_page_ships_its_assets(make_app) -> None:
    client = make_app().test_client()
    page = client.get("/docs")
    assert page.status_code == 200
    assert page.mimetype == "text/html"
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    parser = _Assets()
    parser.feed(page.get_data(as_text=True))
    assert not parser.inline_script
    assert len(parser.links) == 2
    for link in parser.links:
        # Relative links, so the page works behind a path prefix too; no CDN.
        assert not link.startswith(("/", "http:", "https:")), link
        asset = client.get("/" + link)
        assert asset.status_code == 200, link
        assert asset.data == (DOCS_DIR / link.removeprefix("static/docs/")).read_bytes()
    assert "openapi.json" in (DOCS_DIR / "docs.js").read_text()


CHROMIUM = "/usr/bin/chromium"
#: Headless, and nothing that reaches for Google's services on this closed network.
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def test_docs_page_renders_every_operation_in_a_browser(live_server) -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)", pytrace=False)
    from playwright.sync_api import sync_playwright

    server = live_server(ADMIN_TOKEN="admin-secret-0001", PLAYGROUND="1")
    document = build_document(settings_from({"ADMIN_TOKEN": "admin-secret-0001"}))
    operations = sum(len(item) for item in document["paths"].values())
    problems: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.on("pageerror", lambda error: problems.append(f"pageerror: {error}"))
            page.on(
                "console",
                lambda message: problems.append(message.text) if message.type == "error" else None,
            )
            page.goto(server.url + "/docs#op-chat")
            page.wait_for_selector("body[data-ready]")
            assert page.locator("details.op").count() == operations
            for name in document["components"]["schemas"]:
                assert page.locator(f"#schema-{name}").count() == 1, name
            # The anchor opened its operation: its body fields are on show.
            opened = page.locator("#op-chat")
            assert opened.get_attribute("open") is not None
            assert "temperature" in opened.inner_text()
            page.fill("#toc input", "chat-room")
            assert page.locator("details.op:not([hidden])").count() == 3
        finally:
            browser.close()
    assert not problems, problems


def test_document_and_page_are_public_and_never_rate_limited(make_app) -> None:
    app = make_app(AUTH_MODE="simple", AUTH_TOKEN="t0ken-0001", MINUTE_LIMIT="1")
    client = app.test_client()
    # The chat faces are limited and closed...
    assert client.post("/api", json={"user_content": "hi"}).status_code == 401
    # ...the description of the API is not.
    for _ in range(5):
        for path in ("/openapi.json", "/docs"):
            response = client.get(path)
            assert response.status_code == 200, path
            assert "Retry-After" not in response.headers


def test_document_version_is_the_project_version() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert build_document(settings_from({}))["info"]["version"] == project["version"]


def test_document_is_json_built_once_per_app(make_app) -> None:
    app = make_app()
    client = app.test_client()
    first = client.get("/openapi.json")
    assert first.mimetype == "application/json"
    assert client.get("/openapi.json").data == first.data
    assert first.get_json() == build_document(app.extensions["chatservice"].settings)
