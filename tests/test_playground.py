"""The Playground: its routes and headers, then the page itself in headless Chromium.

The browser tests drive Debian's ``chromium`` (installed by ``.ci/run``) through Playwright
against real servers (``live_server``) on 127.0.0.1 whose upstream is the fake one. A missing
browser fails them with a message saying what to install: it is never a skip.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from chatservice.i18n import Catalogs
from tests.fakeupstream import Reply

CHROMIUM = "/usr/bin/chromium"
# Without the background-networking flags Chromium keeps trying to reach Google's services,
# which this machine's closed network refuses (and which no test should depend on).
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
UPSTREAM_KEY = "sk-test-playground-0001"
SERVICE_TOKEN = "playground-service-token-42"  # noqa: S105 - a test credential
SECRETS = (UPSTREAM_KEY, SERVICE_TOKEN, "admin-token-playground-7")
CSP = re.compile(r"content security policy", re.IGNORECASE)


# --- the routes, through the Flask test client ------------------------------------------------


def test_page_is_served_with_its_security_headers(make_app):
    client = make_app().test_client()
    r = client.get("/api/playground")
    assert r.status_code == 200
    assert r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    for directive in (
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ):
        assert directive in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = r.get_data(as_text=True)
    assert '<meta name="viewport"' in html
    # No inline script, handler or style: every script is a file from this origin.
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="playground/static/playground.js" defer>'
    ]
    assert not re.search(r"\son[a-z]+\s*=", html)
    assert not re.search(r"\sstyle\s*=|<style\b", html)


def test_static_assets_are_served_with_their_types(make_app):
    client = make_app().test_client()
    css = client.get("/api/playground/static/playground.css")
    js = client.get("/api/playground/static/playground.js")
    assert css.status_code == 200 and css.mimetype == "text/css"
    assert js.status_code == 200 and js.mimetype in ("text/javascript", "application/javascript")
    for r in (css, js):
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" in r.headers
    assert client.get("/api/playground/static/missing.js").status_code == 404


def test_root_redirects_to_the_page_under_any_route(make_app):
    client = make_app().test_client()
    r = client.get("/")
    assert r.status_code == 302 and r.headers["Location"] == "/api/playground"
    r = client.get("/api/playground/")
    assert r.status_code == 302 and r.headers["Location"] == "/api/playground"

    client = make_app(ROUTE="/v2/chat/").test_client()
    assert client.get("/").headers["Location"] == "/v2/chat/playground"
    assert client.get("/v2/chat/playground").status_code == 200
    assert client.get("/v2/chat/playground/static/playground.js").status_code == 200
    assert client.get("/v2/chat/playground/config.json").get_json()["route"] == "/v2/chat"
    assert client.get("/api/playground").status_code == 404


def test_empty_route_serves_the_page_at_the_root_without_redirect(make_app):
    client = make_app(ROUTE="").test_client()
    assert client.get("/playground").status_code == 200
    assert client.get("/playground/static/playground.css").status_code == 200
    assert client.get("/playground/config.json").get_json()["route"] == ""
    # "/" is the /api face's own path with an empty ROUTE: it is not taken over.
    r = client.get("/")
    assert r.status_code == 405
    assert "Location" not in r.headers


def test_playground_off_serves_nothing(make_app):
    client = make_app(PLAYGROUND="0").test_client()
    for path in (
        "/api/playground",
        "/api/playground/config.json",
        "/api/playground/static/playground.js",
        "/",
    ):
        assert client.get(path).status_code == 404, path


def test_config_names_auth_mode_and_route_but_no_secret(make_app):
    app = make_app(
        API_KEY=UPSTREAM_KEY,
        AUTH_MODE="normal",
        AUTH_TOKEN=SERVICE_TOKEN,
        ADMIN_TOKEN=SECRETS[2],
        DEFAULT_MODEL="gpt-4o-mini",
        CHAT_LANG="ru",
    )
    client = app.test_client()
    r = client.get("/api/playground/config.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert r.get_json() == {
        "route": "/api",
        "auth_mode": "normal",
        "default_model": "gpt-4o-mini",
        "default_lang": "ru",
    }
    assert r.headers["Cache-Control"] == "no-store"
    served = r.data + b"".join(
        client.get(path).data
        for path in ("/api/playground", "/api/playground/static/playground.js")
    )
    for secret in SECRETS:
        assert secret.encode() not in served


def test_page_needs_no_credentials_and_is_not_rate_limited(make_app):
    client = make_app(AUTH_MODE="simple", AUTH_TOKEN=SERVICE_TOKEN, SECOND_LIMIT="1").test_client()
    for _ in range(4):
        for path in ("/api/playground", "/api/playground/config.json"):
            assert client.get(path).status_code == 200, path
    # The face it talks to is still protected: the page only asks for the token.
    assert client.get("/api/v1/models").status_code == 401


# --- the page in a real browser ---------------------------------------------------------------

LAST_ANSWER = "() => { const all = document.querySelectorAll('.msg.assistant .text');"
LAST_ANSWER += " return all.length ? all[all.length - 1].textContent : ''; }"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Debian Chromium driven by Playwright; fails (never skips) when missing."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: the Playground's browser tests need Debian's chromium "
            "(apt-get install chromium; .ci/run installs it)",
            pytrace=False,
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield chromium
        chromium.close()


class Tab:
    """One page in its own browser context, with what it logged and the dialogs it opened."""

    def __init__(self, context: Any, server_url: str) -> None:
        self.context = context
        self.page = context.new_page()
        self.page.set_default_timeout(15_000)
        self.server_url = server_url
        self.dialogs: list[str] = []
        self.console: list[str] = []
        self.page.on("dialog", self._dialog)
        self.page.on("console", lambda message: self.console.append(message.text))
        self.page.on("pageerror", lambda error: self.console.append(f"pageerror: {error}"))

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, path: str = "/api/playground", ready: bool = True) -> None:
        self.page.goto(self.server_url + path)
        if ready:
            self.page.wait_for_selector("body[data-ready]")

    def ask(self, question: str) -> None:
        self.page.fill("#input", question)
        self.page.press("#input", "Enter")

    def wait_answered(self, timeout: float = 15_000) -> str:
        self.page.wait_for_selector("#send:not([hidden])", timeout=timeout)
        return self.answer()

    def answer(self) -> str:
        return self.page.evaluate(LAST_ANSWER)

    def wait_answer_longer_than(self, length: int) -> str:
        self.page.wait_for_function(f"n => ({LAST_ANSWER})().length > n", arg=length)
        return self.answer()

    def errors(self) -> list[str]:
        return self.page.locator(".msg.error .text").all_text_contents()

    def problems(self) -> list[str]:
        """Script errors and Content-Security-Policy violations the page logged."""
        return [line for line in self.console if CSP.search(line) or "pageerror" in line]


@pytest.fixture
def open_tab(browser) -> Iterator[Callable[..., Tab]]:
    """``open_tab(server, **context options)``: a fresh page; contexts closed afterwards."""
    tabs: list[Tab] = []

    def make(server: Any, **options: Any) -> Tab:
        options.setdefault("viewport", DESKTOP)
        options.setdefault("locale", "en-US")
        tab = Tab(browser.new_context(**options), server.url)
        tabs.append(tab)
        return tab

    yield make
    for tab in tabs:
        tab.context.close()


def wait_finished(record: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while record.finished is None and time.monotonic() < deadline:
        time.sleep(0.05)


def set_temperature(page: Any, value: str) -> None:
    # A range input cannot be typed into: set it as a drag would, with its input event.
    page.eval_on_selector(
        "#temperature",
        "(el, v) => { el.value = v; el.dispatchEvent(new Event('input')); }",
        value,
    )


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG\r\n\x1a\n"), path


def test_answer_streams_in_and_the_conversation_is_kept(live_server, upstream, open_tab, tmp_path):
    server = live_server(API_KEY=UPSTREAM_KEY, BACKEND="openai")
    tab = open_tab(server)
    tab.open("/")  # the root redirects to the page
    page = tab.page
    assert page.url == server.url + "/api/playground"
    assert page.inner_text("#send") == "Send"
    # The fake upstream lists no model: the server's DEFAULT_MODEL is used.
    assert page.eval_on_selector("#model", "s => [...s.options].map(o => o.value)") == [""]
    page.fill("#system", "Answer briefly.")
    set_temperature(page, "0.3")
    full = "The capital of France is Paris, a city on the river Seine in the north."
    upstream.default = Reply(text=full, chunk_delay=0.2)

    tab.ask("What is the capital of France?")
    first = tab.wait_answer_longer_than(0)
    second = tab.wait_answer_longer_than(len(first))
    record = upstream.wait_for(1)[0]
    # Both reads happened while the upstream was still writing: the answer grows token by
    # token, it is not shown at the end.
    assert record.finished is None
    assert full.startswith(first) and full.startswith(second) and len(second) < len(full)
    assert tab.wait_answered() == full
    sent = record.json
    assert sent["stream"] is True
    assert sent["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
    ]
    assert sent["temperature"] == 0.3 and sent["max_tokens"] == 256
    assert sent["model"] == "gpt-3.5-turbo"
    assert record.headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    upstream.default = Reply()
    tab.ask("And of Spain?")
    assert tab.wait_answered() == "echo: And of Spain?"
    # The whole conversation goes with every turn.
    assert upstream.wait_for(2)[1].json["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": full},
        {"role": "user", "content": "And of Spain?"},
    ]
    page.screenshot(path=tmp_path / "playground-desktop.png")
    assert_png(tmp_path / "playground-desktop.png")

    page.click("#clear")
    assert page.locator(".msg").count() == 0
    tab.ask("A new start")
    assert tab.wait_answered() == "echo: A new start"
    assert upstream.wait_for(3)[2].json["messages"] == [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "A new start"},
    ]
    assert tab.errors() == [] and tab.problems() == []


def test_stop_aborts_the_stream_and_the_upstream_request(live_server, upstream, open_tab):
    server = live_server(API_KEY=UPSTREAM_KEY, BACKEND="openai")
    full = " ".join(f"w{i}" for i in range(100))
    upstream.default = Reply(text=full, chunk_delay=0.2)
    tab = open_tab(server)
    tab.open()
    tab.ask("Tell me a long story")
    tab.wait_answer_longer_than(0)
    assert tab.page.is_visible("#stop")
    tab.page.click("#stop")
    record = upstream.wait_for(1)[0]
    wait_finished(record)
    # The service hung up on the upstream long before its 20 s answer was over.
    assert record.finished is not None and record.client_gone
    assert record.finished - record.started < 10
    tab.page.wait_for_selector("#send:not([hidden])")
    stopped = tab.page.locator(".msg.assistant").last
    assert "stopped" in stopped.get_attribute("class")
    assert stopped.get_attribute("data-note") == "Stopped"
    partial = tab.answer()
    assert partial.startswith("w0") and full.startswith(partial) and len(partial) < len(full)
    assert tab.errors() == []
    # Stopped before the first word: that turn leaves nothing behind.
    upstream.default = Reply(delay=1.0)
    tab.ask("Never mind")
    upstream.wait_for(2)
    tab.page.click("#stop")
    tab.page.wait_for_selector("#send:not([hidden])")
    assert tab.page.locator(".msg.assistant").count() == 1
    assert "failed" in tab.page.locator(".msg.user").last.get_attribute("class")
    # What arrived before the first Stop stays in the conversation.
    upstream.default = Reply()
    tab.ask("Go on")
    assert tab.wait_answered() == "echo: Go on"
    messages = upstream.wait_for(3)[2].json["messages"]
    assert messages == [
        {"role": "user", "content": "Tell me a long story"},
        {"role": "assistant", "content": partial},
        {"role": "user", "content": "Go on"},
    ]


def test_an_answer_with_markup_is_shown_as_text(live_server, upstream, open_tab):
    server = live_server(API_KEY=UPSTREAM_KEY, BACKEND="openai")
    markup = "<script>alert(1)</script> <img src=x onerror=alert(2)> <b>bold</b>"
    upstream.default = Reply(text=markup)
    tab = open_tab(server)
    tab.open()
    tab.ask("Show me some HTML")
    assert tab.wait_answered() == markup
    assert tab.page.locator("#log script, #log img, #log b").count() == 0
    # An image with the same source, made by the test: once its load has failed, the
    # answer's image (had it been made) would have failed and fired its onerror too.
    failed = tab.page.evaluate(
        """() => new Promise((done) => {
            const probe = new Image();
            probe.onerror = () => done(true);
            probe.onload = () => done(false);
            probe.src = "x";
        })"""
    )
    assert failed is True
    assert tab.dialogs == []
    # The dialog listener works: an alert the test itself raises is seen.
    tab.page.evaluate("() => alert('probe')")
    assert tab.dialogs == ["probe"]
    assert tab.problems() == []


def test_rate_limit_shows_the_services_message_in_the_browsers_language(
    live_server, upstream, open_tab
):
    server = live_server(API_KEY=UPSTREAM_KEY, BACKEND="openai", MINUTE_LIMIT="2")
    tab = open_tab(server, locale="ru-RU")
    tab.open()  # GET /v1/models: the first request of the minute
    page = tab.page
    assert page.inner_text("#send") == "Отправить"
    assert page.inner_text("#clear") == "Новый чат"
    assert page.evaluate("document.documentElement.lang") == "ru"
    tab.ask("Первый вопрос")  # the second
    assert tab.wait_answered() == "echo: Первый вопрос"
    tab.ask("Второй вопрос")  # the third: refused
    page.wait_for_selector(".msg.error")
    template = Catalogs.load().translate("rate_limited", "ru", seconds="SECONDS")
    pattern = re.escape(template).replace("SECONDS", r"\d+")
    assert re.fullmatch(pattern, tab.errors()[0]), tab.errors()
    assert page.inner_text(".msg.error .who") == "Ошибка"
    # The refused question is not part of the conversation; it is back in the input.
    assert "failed" in page.locator(".msg.user").last.get_attribute("class")
    assert page.input_value("#input") == "Второй вопрос"
    assert len(upstream.received) == 1
    assert tab.problems() == []


def test_phone_and_desktop_layouts_in_traditional_chinese(
    live_server, upstream, open_tab, tmp_path
):
    server = live_server(API_KEY=UPSTREAM_KEY, BACKEND="openai")
    for name, viewport in (("phone", PHONE), ("desktop", DESKTOP)):
        tab = open_tab(server, viewport=viewport, locale="zh-TW", is_mobile=name == "phone")
        tab.open()
        page = tab.page
        assert page.inner_text("#send") == "送出"
        assert page.get_attribute("#system", "placeholder") == "選填：助理應如何表現"
        tab.ask("台灣最高的山是哪一座？")
        assert tab.wait_answered() == "echo: 台灣最高的山是哪一座？"
        # Nothing sticks out sideways; the composer stays on screen.
        assert page.evaluate("document.documentElement.scrollWidth") <= viewport["width"]
        box = page.locator("#composer").bounding_box()
        assert box["y"] + box["height"] <= viewport["height"] + 1
        if name == "phone":
            # Settings fold away behind a button on a phone.
            assert not page.is_visible("#system")
            page.click("#settings-toggle")
            assert page.is_visible("#system")
        else:
            assert not page.is_visible("#settings-toggle") and page.is_visible("#system")
        path = tmp_path / f"playground-{name}-zh-TW.png"
        page.screenshot(path=path)
        assert_png(path)
        assert tab.problems() == []


def test_simple_auth_asks_for_the_token_then_chats(live_server, upstream, open_tab):
    server = live_server(
        API_KEY=UPSTREAM_KEY, BACKEND="openai", AUTH_MODE="simple", AUTH_TOKEN=SERVICE_TOKEN
    )
    tab = open_tab(server)
    tab.open(ready=False)
    page = tab.page
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", "not-the-token")
    page.press("#token", "Enter")
    page.wait_for_selector(".msg.error")
    assert tab.errors() == [Catalogs.load().translate("auth_failed", "en")]
    page.wait_for_selector("#token-form:not([hidden])")

    page.fill("#token", SERVICE_TOKEN)
    page.press("#token", "Enter")
    page.wait_for_selector("#token-form", state="hidden")
    tab.ask("Hello with a token")
    assert tab.wait_answered() == "echo: Hello with a token"
    assert page.evaluate("Object.values(sessionStorage)") == [SERVICE_TOKEN]
    assert SERVICE_TOKEN not in page.url
    # The service's token stays with the service: the upstream gets the server's own key.
    assert upstream.wait_for(1)[0].headers["Authorization"] == f"Bearer {UPSTREAM_KEY}"

    # A reload in the same tab keeps the token (sessionStorage) and chats at once.
    page.reload()
    page.wait_for_selector("body[data-ready]")
    assert page.is_hidden("#token-form")
    tab.ask("Again")
    assert tab.wait_answered() == "echo: Again"


def test_normal_auth_signs_every_request_under_another_route(live_server, upstream, open_tab):
    server = live_server(
        API_KEY=UPSTREAM_KEY,
        BACKEND="openai",
        AUTH_MODE="normal",
        AUTH_TOKEN=SERVICE_TOKEN,
        ROUTE="v2/chat",
    )
    tab = open_tab(server)
    tab.open("/", ready=False)
    page = tab.page
    assert page.url == server.url + "/v2/chat/playground"
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", SERVICE_TOKEN)
    page.press("#token", "Enter")
    page.wait_for_selector("body[data-ready]")
    # Each request carries a fresh uuid: a replayed one would be refused.
    for question in ("First signed question", "Second signed question"):
        tab.ask(question)
        assert tab.wait_answered() == f"echo: {question}"
    assert tab.errors() == [] and len(upstream.received) == 2


def test_the_embedded_model_answers_in_the_page(live_server, upstream, open_tab):
    server = live_server(BACKEND="local")
    tab = open_tab(server)
    tab.open()
    page = tab.page
    assert page.input_value("#model") == "smollm2-135m-instruct"
    page.fill("#max-tokens", "32")
    set_temperature(page, "0")  # greedy: the same answer every run
    tab.ask("What is the capital of France?")
    answer = tab.wait_answered(timeout=60_000)
    assert answer.strip()
    assert upstream.received == []  # answered by the embedded model, not the upstream
    assert tab.errors() == [] and tab.problems() == []
