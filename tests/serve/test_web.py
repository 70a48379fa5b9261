"""The web chat page in a real browser: headless Chromium (Debian's package) driven by Playwright.

Chromium comes from apt (`apt-get install chromium`), not Playwright's download (no internet here); the
test installs nothing and skips, saying why, only when no Chromium binary or Playwright is present.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.serve.conftest import wait_idle

ROOT = Path(__file__).resolve().parents[2]


def chromium_path() -> str | None:
    for name in (os.environ.get("LMFORGE_CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and (path := shutil.which(name)):
            return path
    return None


@pytest.fixture(scope="module")
def page(server):
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
    )
    exe = chromium_path()
    if exe is None:
        pytest.skip(
            "no Chromium binary: install it with `apt-get install -y chromium` (scripts/setup.sh --dev)"
        )
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.set_default_timeout(60_000)
        yield page
        browser.close()


def test_chat_page_streams_an_answer(page, server):
    page.goto(server.url + "/")
    page.wait_for_function("document.getElementById('model-name').textContent.includes('smollm2')")
    # the server wants a key: the page shows the key box
    assert page.is_visible("#api-key")
    page.fill("#api-key", server.api_key)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "40")
    page.fill("#prompt", "What is the capital of France?")
    page.keyboard.press("Enter")
    answer = page.locator(".msg.assistant").last
    answer.locator(".content", has_text="Paris").wait_for()
    page.wait_for_selector(".msg.assistant[data-done]")
    assert answer.get_attribute("data-done") == "stop"
    assert page.locator(".msg.user .content").inner_text() == "What is the capital of France?"
    assert "tok/s" in answer.locator(".meta").inner_text()
    # markdown: the second turn asks for a list; the conversation goes with it
    page.fill("#prompt", "Name three French cities as a bulleted list.")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant[data-done]').length == 2")
    assert page.evaluate("messages.length") == 4  # user, assistant, user, assistant
    shot = ROOT / "bench" / "out" / "serve_chat.png"
    shot.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(shot))


def test_stop_button_cancels(page, server):
    page.click("#new-chat")
    assert page.evaluate("messages.length") == 0
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "1000")
    page.fill("#prompt", "Write a very long story about a dragon who learns to cook.")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    page.wait_for_function(
        "(() => { const c = document.querySelectorAll('.msg.assistant .content'); "
        "return c.length && c[c.length - 1].textContent.split(' ').length > 5; })()"
    )
    assert page.is_visible("#stop") and not page.is_visible("#send")
    page.click("#stop")
    page.wait_for_selector(".msg.assistant[data-done='stopped']")
    assert page.is_visible("#send")
    text = answer.locator(".content").inner_text()
    assert len(text.split()) > 5
    started = time.monotonic()
    stats = wait_idle(server)
    assert stats["running"] == 0 and server.state.active == 0, stats
    assert time.monotonic() - started < 15
    assert "stopped" in answer.locator(".meta").inner_text()
