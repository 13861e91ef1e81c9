"""The admin page (/{ROUTE}/admin/): its headers through the test client, then the page in
headless Chromium (Playwright, as the playground's tests drive it) against a real server:
sign in, create a key and copy it, use it through the OpenAI-compatible face, see its tokens
in the chart and the table, disable and delete it; on a phone and in the four languages.
"""

from __future__ import annotations

import re
from pathlib import Path

import requests

from tests import test_playground
from tests.fakeupstream import Reply
from tests.test_playground import PHONE, assert_png

# The playground's browser fixtures: one headless Chromium per module, a context per tab.
browser = test_playground.browser
open_tab = test_playground.open_tab

ADMIN = "admin-token-page-0042"  # noqa: S105 - a test credential
UPSTREAM_KEY = "sk-test-admin-page-0001"
ENV = {"AUTH_MODE": "keys", "ADMIN_TOKEN": ADMIN, "API_KEY": UPSTREAM_KEY, "BACKEND": "openai"}


def test_page_and_assets_carry_the_strict_policy(make_app):
    client = make_app(**ENV).test_client()
    r = client.get("/api/admin/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    csp = r.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert r.headers["X-Content-Type-Options"] == "nosniff"
    html = r.get_data(as_text=True)
    assert re.findall(r"<script\b[^>]*>", html) == [
        '<script src="static/vendor/chart.umd.min.js" defer>',
        '<script src="static/admin.js" defer>',
    ]
    assert not re.search(r"\son[a-z]+\s*=|\sstyle\s*=|<style\b", html)
    assert "http://" not in html and "https://" not in html  # no CDN
    for path in ("admin.js", "admin.css", "vendor/chart.umd.min.js", "vendor/chart.js.LICENSE.md"):
        asset = client.get(f"/api/admin/static/{path}")
        assert asset.status_code == 200, path
        assert "Content-Security-Policy" in asset.headers
    assert client.get("/api/admin").headers["Location"] == "/api/admin/"
    served = html + client.get("/api/admin/static/admin.js").get_data(as_text=True)
    assert ADMIN not in served


def chart_tokens(page) -> dict[str, int]:
    return page.evaluate(
        "() => Object.fromEntries(Chart.getChart('usage-chart').data.datasets"
        ".map(d => [d.label, d.data.reduce((a, b) => a + b, 0)]))"
    )


def refresh_usage(page) -> None:
    before = page.get_attribute("body", "data-usage-loaded")
    page.click("#range button[type=submit]")
    page.wait_for_function(
        "b => document.body.dataset.usageLoaded && document.body.dataset.usageLoaded !== b",
        arg=before,
    )


def test_create_use_and_see_a_key_in_the_chart_and_table(live_server, upstream, open_tab, tmp_path):
    server = live_server(**ENV)
    tab = open_tab(server, permissions=["clipboard-read", "clipboard-write"])
    tab.open("/api/admin", ready=False)
    page = tab.page
    page.wait_for_selector("body[data-ready]")
    assert page.url == server.url + "/api/admin/"
    assert page.is_visible("#sign-in") and not page.is_visible("#panels")

    page.fill("#admin-token", "wrong-token")
    page.press("#admin-token", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    assert "admin token" in page.inner_text("#error")
    assert page.is_visible("#sign-in")

    page.fill("#admin-token", ADMIN)
    page.press("#admin-token", "Enter")
    page.wait_for_selector("#panels:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('chatservice.admin.token')") == ADMIN
    page.wait_for_selector("#no-keys:not([hidden])")

    page.fill("#new-name", "browser-bot")
    page.fill("#new-models", "gpt-4o*")
    page.fill("#new-budget", "5000")
    page.click("#create button[type=submit]")
    page.wait_for_selector("#created:not([hidden])")
    key = page.inner_text("#created-key")
    assert re.fullmatch(r"csk-[A-Za-z0-9_-]{43}", key)
    page.click("#copy")
    page.wait_for_function("() => document.getElementById('copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == key
    row = page.locator("#keys tr[data-name='browser-bot']")
    row.wait_for()
    assert key not in row.inner_text() and f"csk-...{key[-4:]}" in row.inner_text()

    upstream.default = Reply(text="one two three")
    for _ in range(2):
        r = requests.post(
            server.url + "/api/v1/chat/completions",
            json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {key}"},
            timeout=10,
        )
        assert r.status_code == 200
    refresh_usage(page)
    assert chart_tokens(page) == {"browser-bot": 16}  # 2 x (5 prompt + 3 completion)
    model_row = page.locator("#models tr[data-model='gpt-4o'] td")
    assert model_row.all_text_contents()[:5] == ["gpt-4o", "2", "10", "6", "0"]

    page.click("#keys tr[data-name='browser-bot'] button.toggle")
    page.wait_for_selector("#keys tr[data-name='browser-bot'] .state-off")
    r = requests.post(
        server.url + "/api/v1/chat/completions",
        json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        headers={"Authorization": f"Bearer {key}"},
        timeout=10,
    )
    assert r.status_code == 401
    delete = page.locator("#keys tr[data-name='browser-bot'] button.delete")
    delete.click()
    assert delete.inner_text() == "Really delete?"
    delete.click()
    page.wait_for_selector("#no-keys:not([hidden])")
    page.screenshot(path=tmp_path / "admin-desktop.png")
    assert_png(tmp_path / "admin-desktop.png")
    assert tab.problems() == [], tab.console
    assert key not in server.log_text() and ADMIN not in server.log_text()


def test_phone_and_languages(live_server, open_tab, tmp_path):
    server = live_server(**ENV)
    labels = {
        "en-US": "Admin token",
        "zh-CN": "管理令牌",
        "zh-TW": "管理權杖",
        "ru-RU": "Токен администратора",
    }
    for locale, label in labels.items():
        tab = open_tab(server, viewport=PHONE, locale=locale, is_mobile=True, has_touch=True)
        tab.open("/api/admin/")
        assert tab.page.inner_text("label[for=admin-token]") == label
        tab.page.fill("#admin-token", ADMIN)
        tab.page.press("#admin-token", "Enter")
        tab.page.wait_for_selector("body[data-usage-loaded]")
        # Nothing wider than the phone: tables scroll inside their cards.
        width = tab.page.evaluate("document.documentElement.scrollWidth")
        assert width <= PHONE["width"], locale
        assert tab.problems() == [], tab.console
    tab.page.screenshot(path=tmp_path / "admin-phone.png", full_page=True)
    assert_png(Path(tmp_path / "admin-phone.png"))
