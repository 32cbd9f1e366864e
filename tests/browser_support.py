"""Shared pieces of the browser tests: Debian's chromium through Playwright.

`browser` is this worker's headless chromium, kept from one browser test to
the next. `static_page` opens a page whose /static/ URLs are answered straight
from the repository's static/ folder (Playwright routing, no server), for
tests of the front-end modules on their own; whole-site tests use the real
daphne of tests/live_server.py, with the page helpers below (`new_page` and
`close`, `sign_up`, `sign_up_in_the_form`, `ready`, `set_settings`,
`settle_reply`, `audit`).
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import Path

import pytest

from tests import clients

try:
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import Page, expect, sync_playwright
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
PASSWORD = "a-long-Passw0rd!"
# Replies come from the real model on a busy CPU: pages and expectations wait this long.
TIMEOUT_MS = 60_000
LAST_REPLY = "#transcript li.msg-assistant >> nth=-1"
AXE = (TEST_VENDOR / "axe-core" / "axe.min.js").read_text()
if sync_playwright is not None:
    expect.set_options(timeout=TIMEOUT_MS)


class _Chromium:
    """This worker's chromium: launched for the first browser test, kept for the next ones, and stopped
    before any test that does not use it.

    A launch costs 1.2 s of CPU, and tests/conftest.py runs the files of browser tests first, so a
    worker launches chromium once or twice rather than once per file. It cannot stay up for other
    tests: while Playwright's sync API is started it keeps an event loop running in the thread,
    and asyncio.run (and pytest-asyncio's tests) refuse to run there.
    """

    def __init__(self) -> None:
        self.playwright = None
        self.browser = None
        self.idle: list = []  # contexts at rest, emptied of pages, cookies and local storage (close())
        self.pooled: set = set()  # every context new_page may hand out again

    def start(self):
        if self.browser is None:
            self.playwright = sync_playwright().start()
            self.browser = self.playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        return self.browser

    def stop(self) -> None:
        if self.browser is not None:
            self.browser.close()
            self.playwright.stop()
            self.browser = self.playwright = None
            self.idle, self.pooled = [], set()


_chromium = _Chromium()


@pytest.fixture
def browser():
    if sync_playwright is None:
        pytest.fail(PLAYWRIGHT_ERROR)
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: the browser tests need Debian's chromium "
            "(`apt-get install chromium`, or `make test`, which installs it)"
        )
    return _chromium.start()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item) -> None:
    if "browser" not in item.fixturenames:
        _chromium.stop()


def pytest_sessionfinish(session) -> None:
    _chromium.stop()


class PageProblems:
    """Dialogs, script errors, console errors and CSP violations seen on a page: any of them fails the test."""

    def __init__(self, page: Page) -> None:
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.expected: list[str] = []  # console errors a test causes on purpose (see expect_error)
        page.on("dialog", self._on_dialog)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        # A Content-Security-Policy violation is reported on the console.
        page.on("console", self._on_console)

    def expect_error(self, text: str) -> None:
        """The page is meant to log this console error once (a 404 page's own status, say)."""
        self.expected.append(text)

    def _on_console(self, message) -> None:
        if message.type != "error" and "Content Security Policy" not in message.text:
            return
        expected = next((text for text in self.expected if text in message.text), None)
        if expected is not None:
            self.expected.remove(expected)
            return
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


def site_policy() -> str:
    """The Content-Security-Policy header the site sends (django-csp, from settings)."""
    from csp.utils import build_policy

    return build_policy()


def static_page(browser, body: str = '<div id="out" class="md"></div>'):
    """A page at ORIGIN, under the site's own Content-Security-Policy, with the renderer imported as
    window.Markdown; returns (context, page, problems)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.route(ORIGIN + "/static/**", _serve_static)
    headers = {"Content-Type": "text/html", "Content-Security-Policy": site_policy()}
    context.route(
        ORIGIN + "/",
        lambda route: route.fulfill(
            status=200,
            body=f"<!doctype html><html><head><meta charset=utf-8></head><body>{body}</body></html>",
            headers=headers,
        ),
    )
    page = context.new_page()
    problems = PageProblems(page)
    page.goto(ORIGIN + "/")
    page.evaluate("async () => { window.Markdown = await import('/static/chat/markdown.js'); }")
    return context, page, problems


# -- whole-site pages (a real daphne) ----------------------------------------------


def new_page(browser, width=1280, height=860, **options):
    """A page in a context that no other open page shares; returns (context, page, problems).

    The test hands the context back with close(context). Without options (permissions, ...) the
    context is one of this worker's, used before: its pages, cookies and local storage were
    cleared, and its HTTP cache kept. A fresh context's first visit to the chat page cost
    chromium 1.7 s of CPU, a used one's 0.85 s (the hashed static files are cached, as in a
    person's browser).
    """
    if options:
        context = _new_context(browser, **options)
    elif _chromium.idle:
        context = _chromium.idle.pop()
    else:
        context = _new_context(browser)
        _chromium.pooled.add(context)
    page = context.new_page()
    if (width, height) != (1280, 860):
        page.set_viewport_size({"width": width, "height": height})
    return context, page, PageProblems(page)


def _new_context(browser, **options):
    context = browser.new_context(viewport={"width": 1280, "height": 860}, **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


def close(context) -> None:
    """The end of a test's context from new_page: a used one is emptied and kept for the next test."""
    if context not in _chromium.pooled:
        context.close()
        return
    try:
        for page in context.pages:
            # The theme toggle's choice is the site's one use of local storage (static/chat/theme.js).
            if page.url.startswith("http"):
                page.evaluate("() => localStorage.clear()")
            page.close()
        context.clear_cookies()
    except PlaywrightError:  # a page that would not be emptied (still navigating, say): not kept
        _chromium.pooled.discard(context)
        context.close()
        return
    _chromium.idle.append(context)


def ready(page: Page) -> None:
    """Wait until the page's modules have run (module scripts run after the page is shown)."""
    expect(page.locator("html")).to_have_attribute("data-ready", "1")


def sign_up(page: Page, base_url: str, username: str) -> None:
    """A new account, signed in on the page's context, which is left on the welcome page.

    The account is made over HTTP (tests/clients.py) and its cookies are given to the context: the
    form's own page cost chromium about a second of CPU in each test. The form itself is driven by
    sign_up_in_the_form (test_e2e's browser test) and audited by test_accessibility.
    """
    session = clients.sign_up(base_url, username)
    page.context.add_cookies([{"name": c.name, "value": c.value or "", "url": base_url} for c in session.cookies])
    page.goto(base_url + "/")
    ready(page)


def sign_up_in_the_form(page: Page, base_url: str, username: str) -> None:
    """A new account made through the sign-up form, as a person makes one; the page ends on the welcome page."""
    page.goto(base_url + "/accounts/signup/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password confirmation").fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(base_url + "/")
    ready(page)


def set_settings(page: Page, **values) -> None:
    """Open the settings drawer, fill in values, close it with Escape."""
    page.get_by_role("button", name="Chat settings").click()
    fields = {
        "temperature": "#set-temperature",
        "top_p": "#set-top-p",
        "max_new_tokens": "#set-max-tokens",
        "repetition_penalty": "#set-rep",
    }
    for name, value in values.items():
        page.locator(fields[name]).fill(str(value))
    page.keyboard.press("Escape")
    expect(page.locator("#settings-panel")).not_to_have_class(re.compile(r"\bopen\b"))


def settle_reply(page: Page) -> None:
    """The last reply has ended and shows the server's status line."""
    expect(page.locator(LAST_REPLY)).not_to_have_attribute("data-status", "streaming")
    expect(page.locator(LAST_REPLY).locator(".msg-meta")).to_contain_text(re.compile(r"tokens?|Stopped"))


def new_chat(page: Page, text: str, max_new_tokens: int = 4) -> str:
    """From the welcome page: a chat whose first message is `text`, its short reply ended; returns its URL."""
    set_settings(page, max_new_tokens=max_new_tokens)
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    settle_reply(page)
    return page.url


def audit(page: Page, label: str) -> list[str]:
    """axe-core's violations on the page. Evaluated through the DevTools protocol, which the page's
    Content-Security-Policy does not govern, so the page keeps its policy while axe runs."""
    page.evaluate(AXE)
    violations = page.evaluate(
        """async () => (await axe.run(document, { resultTypes: ['violations'] })).violations
             .map(v => v.id + ' (' + v.impact + '): ' + v.nodes.map(n => n.target.join(' ')).join(', '))"""
    )
    return [f"{label}: {v}" for v in violations]
