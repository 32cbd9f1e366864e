"""Shared pieces of the browser tests: Debian's chromium through Playwright.

`browser` starts one headless chromium per test module. `static_page` opens a
page whose /static/ URLs are answered straight from the repository's static/
folder (Playwright routing, no server), for tests of the front-end modules on
their own; whole-site tests use the real daphne of tests/live_server.py.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import pytest

try:
    from playwright.sync_api import Page, sync_playwright
except ImportError as exc:  # pragma: no cover - a broken install must fail, not skip
    sync_playwright = None
    PLAYWRIGHT_ERROR = f"playwright is not installed ({exc}); `make test` installs it"
else:
    PLAYWRIGHT_ERROR = ""

REPO = Path(__file__).resolve().parent.parent
STATIC = REPO / "static"
TEST_VENDOR = REPO / "tests" / "vendor"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
ORIGIN = "http://chatsite.test"
TYPES = {".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css"}


@pytest.fixture(scope="module")
def browser():
    if sync_playwright is None:
        pytest.fail(PLAYWRIGHT_ERROR)
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(`apt-get install chromium`, or `make test`, which installs it)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class PageProblems:
    """Dialogs, script errors and CSP violations seen on a page: any of them fails the test."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        # A Content-Security-Policy violation is reported on the console.
        page.on("console", self._on_console)

    def _on_console(self, message) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.errors.append(message.text)

    def _on_dialog(self, dialog) -> None:
        self.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def check(self) -> None:
        assert not self.dialogs, f"a dialog opened (injected script ran?): {self.dialogs}"
        assert not self.errors, f"script errors on the page: {self.errors}"


def _serve_static(route) -> None:
    path = route.request.url.split("?", 1)[0][len(ORIGIN + "/static/") :]
    file = (STATIC / path).resolve()
    if STATIC not in file.parents or not file.is_file():
        route.fulfill(status=404, body="not found")
        return
    kind = TYPES.get(file.suffix) or mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    route.fulfill(status=200, body=file.read_bytes(), headers={"Content-Type": kind})


def static_page(browser, body: str = '<div id="out" class="md"></div>'):
    """A page at ORIGIN with the renderer imported as window.Markdown; returns (context, page, problems)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.route(ORIGIN + "/static/**", _serve_static)
    context.route(
        ORIGIN + "/",
        lambda route: route.fulfill(
            status=200,
            body=f"<!doctype html><html><head><meta charset=utf-8></head><body>{body}</body></html>",
            headers={"Content-Type": "text/html"},
        ),
    )
    page = context.new_page()
    problems = PageProblems(page)
    page.goto(ORIGIN + "/")
    page.evaluate("async () => { window.Markdown = await import('/static/chat/markdown.js'); }")
    return context, page, problems
