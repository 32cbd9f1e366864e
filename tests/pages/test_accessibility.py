"""Accessibility in chromium against a real daphne: axe-core on every page in both
themes, a keyboard-only walkthrough that keeps focus, and one announcement per reply.

axe-core is vendored in tests/vendor/ (make vendor) and injected by Playwright.
Every page keeps the site's real Content-Security-Policy, and any CSP
violation or console error fails the test (tests/browser_support.py).
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import (
    LAST_REPLY,
    audit,
    close,
    new_chat,
    new_page,
    ready,
    set_settings,
    settle_reply,
    sign_up,
)

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

RICH = (
    "Here is **bold**, a [link](https://example.com), math $a^2 + b^2 = c^2$ and code:\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n\n| a | b |\n|---|--:|\n| 1 | 2 |"
)
# Stopped, or (if the model ended it first, on a fast machine) complete: focus is what is checked here.
ENDED = re.compile(r"^(cancelled|complete)$")


def test_axe_finds_nothing_on_any_page_in_either_theme(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "axe-user")
    # A chat whose messages have code, math, a table and a link in them.
    chat_url = new_chat(page, RICH, max_new_tokens=12)
    expect(page.locator("#transcript li.msg-user .katex")).to_have_count(1)
    expect(page.locator("#transcript li.msg-user code.hljs")).to_have_count(1)

    found: list[str] = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        for url, label in ((chat_url, "chat"), (base + "/", "welcome")):
            page.goto(url)
            ready(page)
            expect(page.locator("html")).to_have_attribute("data-theme", scheme)
            if label == "chat":
                expect(page.locator("#transcript li.msg-user .katex")).to_have_count(1)
                expect(page.locator("#transcript li.msg-user code.hljs")).to_have_count(1)
            found += audit(page, f"{label} ({scheme})")
        page.goto(chat_url)
        ready(page)
        page.get_by_role("button", name="Chat settings").click()
        found += audit(page, f"settings ({scheme})")
        page.keyboard.press("Escape")
        page.locator("details.menu summary").click()
        found += audit(page, f"menu ({scheme})")
        page.get_by_role("button", name="Rename", exact=True).click()
        found += audit(page, f"rename dialog ({scheme})")
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 390, "height": 844})
        page.get_by_role("button", name="Show the chat list").click()
        found += audit(page, f"chat list at 390 px ({scheme})")
        page.keyboard.press("Escape")
        page.set_viewport_size({"width": 1280, "height": 860})

    anonymous, anon_page, anon_problems = new_page(browser)
    for scheme in ("light", "dark"):
        anon_page.emulate_media(color_scheme=scheme)
        for path, label in (("/accounts/login/", "login"), ("/accounts/signup/", "signup")):
            anon_page.goto(base + path)
            found += audit(anon_page, f"{label} ({scheme})")
        anon_page.get_by_label("Username").fill("nobody")
        anon_page.get_by_label("Password", exact=True).fill("x")
        anon_page.get_by_label("Password confirmation").fill("y")
        anon_page.get_by_role("button", name="Sign up").click()
        expect(anon_page.locator(".errorlist").first).to_be_visible()
        found += audit(anon_page, f"signup with errors ({scheme})")
    close(anonymous)
    assert found == [], "\n".join(found)
    anon_problems.check()
    problems.check()
    close(context)


def focused(page: Page) -> str:
    """A short description of the focused element."""
    return page.evaluate(
        """() => { const e = document.activeElement; if (!e || e === document.body) return 'body';
                   return e.tagName.toLowerCase() + (e.id ? '#' + e.id : '') + ' "' +
                   (e.getAttribute('aria-label') || e.textContent || '').trim().slice(0, 40) + '"'; }"""
    )


def tab_to(page: Page, selector: str, limit: int = 80, backwards: bool = False) -> None:
    """Press Tab (or Shift+Tab) until the element matching `selector` has focus."""
    for _ in range(limit):
        if page.evaluate("s => document.activeElement && document.activeElement.matches(s)", selector):
            return
        page.keyboard.press("Shift+Tab" if backwards else "Tab")
    raise AssertionError(f"Tab never reached {selector}; focus is on {focused(page)}")


def expect_focus(page: Page, selector: str) -> None:
    page.wait_for_function("s => document.activeElement && document.activeElement.matches(s)", arg=selector)


def test_keyboard_only_walkthrough_keeps_focus(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "keyboard-user")

    # Settings: the panel takes focus, holds it, and gives it back.
    tab_to(page, "#settings-toggle")
    page.keyboard.press("Enter")
    expect_focus(page, "#settings-panel *")
    for _ in range(25):
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.querySelector('#settings-panel').contains(document.activeElement)"), (
            focused(page)
        )
    tab_to(page, "#set-max-tokens")
    page.keyboard.press("Control+A")
    page.keyboard.type("1024")
    page.keyboard.press("Escape")
    expect_focus(page, "#settings-toggle")

    # The first message starts a chat; on its page the box has focus again.
    tab_to(page, "#composer-input")
    page.keyboard.type("Write a very long story about a lighthouse keeper.")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    first_chat = page.url
    ready(page)
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", "streaming")

    # Stop, by keyboard, from the button: focus stays on it, and it becomes Send again.
    tab_to(page, "#send-button")
    expect(page.locator("#send-button")).to_have_attribute("aria-label", "Stop generating")
    page.keyboard.press("Enter")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", ENDED)
    expect(page.locator("#send-button")).to_have_attribute("aria-label", "Send message")
    expect_focus(page, "#send-button")

    # Send from the button: focus stays on it while it turns into Stop.
    tab_to(page, "#composer-input", backwards=True)
    page.keyboard.type("And another one, just as long.")
    page.keyboard.press("Tab")
    expect_focus(page, "#send-button")
    page.keyboard.press("Enter")
    expect(page.locator("#transcript li.msg-assistant")).to_have_count(2)
    expect(page.locator("#send-button")).to_have_attribute("aria-label", "Stop generating")
    expect_focus(page, "#send-button")
    page.keyboard.press("Enter")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", ENDED)
    expect_focus(page, "#send-button")

    # Regenerate: its button goes away with the old reply; focus moves to Stop.
    tab_to(page, "button[data-action=regenerate]", backwards=True)
    old_reply = page.locator(LAST_REPLY).get_attribute("data-id")
    page.keyboard.press("Enter")
    expect(page.locator(f'#transcript li.msg[data-id="{old_reply}"]')).to_have_count(0)
    expect_focus(page, "#send-button")
    page.keyboard.press("Enter")  # stop the regenerated reply too
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-status", ENDED)
    expect_focus(page, "#send-button")

    # The ⋯ menu answers the arrow keys, and Escape gives focus back to its button.
    tab_to(page, "details.menu summary", backwards=True)
    page.keyboard.press("Enter")
    page.keyboard.press("ArrowDown")
    expect_focus(page, ".menu-list li:first-child button")
    page.keyboard.press("End")
    expect_focus(page, ".menu-list button.danger")
    page.keyboard.press("ArrowDown")
    expect_focus(page, ".menu-list li:first-child button")
    page.keyboard.press("Escape")
    expect_focus(page, "details.menu summary")

    # Rename from the menu: the dialog takes focus; cancelling returns it to the menu button.
    page.keyboard.press("Enter")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect_focus(page, "#rename-input")
    page.keyboard.press("Escape")
    expect_focus(page, "details.menu summary")
    page.keyboard.press("Enter")
    page.keyboard.press("ArrowDown")
    page.keyboard.press("Enter")
    expect_focus(page, "#rename-input")
    page.keyboard.press("Control+A")
    page.keyboard.type("Lighthouse stories")
    page.keyboard.press("Enter")
    expect(page.locator("#chat-title")).to_have_text("Lighthouse stories")
    ready(page)
    expect_focus(page, "#composer-input")

    # A second chat, then switch back to the first through the chat list.
    tab_to(page, ".sidebar-new a", backwards=True)
    page.keyboard.press("Enter")
    expect(page).to_have_url(base + "/")
    ready(page)
    expect_focus(page, "#composer-input")
    page.keyboard.type("Hello")
    page.keyboard.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    ready(page)
    expect(page.locator("#transcript li.msg-user")).to_have_count(1)
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # stop (or nothing, if the reply already ended)
    tab_to(page, '.conv a[title="Lighthouse stories"]', backwards=True)
    page.keyboard.press("Enter")
    expect(page).to_have_url(first_chat)
    ready(page)
    expect_focus(page, "#composer-input")

    # Delete from the menu: the chat is gone at once, and the page offers Undo.
    tab_to(page, "details.menu summary", backwards=True)
    page.keyboard.press("Enter")
    page.keyboard.press("End")
    page.keyboard.press("Enter")
    expect(page).to_have_url(base + "/")
    ready(page)
    expect(page.locator('.conv a[title="Lighthouse stories"]')).to_have_count(0)
    expect(page.locator(".flashes .alert")).to_contain_text("Deleted “Lighthouse stories”.")
    expect_focus(page, "#composer-input")

    # At phone width the open chat list holds focus and Escape returns it.
    page.set_viewport_size({"width": 390, "height": 844})
    tab_to(page, "#menu-toggle", backwards=True)
    page.keyboard.press("Enter")
    for _ in range(20):
        page.keyboard.press("Tab")
        assert page.evaluate("() => document.querySelector('#sidebar').contains(document.activeElement)"), focused(page)
    page.keyboard.press("Escape")
    expect_focus(page, "#menu-toggle")
    problems.check()
    close(context)


WATCH_LIVE_REGIONS = """() => {
  window.announcements = [];
  const regions = [...document.querySelectorAll('[aria-live], [role=status], [role=alert], [role=log]')];
  for (const region of regions) {
    new MutationObserver(() => {
      const text = region.textContent.trim();
      if (text) window.announcements.push([region.id || region.className, text]);
    }).observe(region, { childList: true, subtree: true, characterData: true });
  }
  return regions.map(r => r.id || r.className);
}"""


# Every value #conversation-log's aria-busy takes from here on. A short reply can start and end
# between two of Playwright's polls (it did on a loaded machine), so the change is recorded, not polled.
WATCH_BUSY = """() => {
  const log = document.querySelector('#conversation-log');
  window.busyValues = [];
  new MutationObserver(records => {
    for (const record of records) window.busyValues.push(record.oldValue);
    window.busyValues.push(log.getAttribute('aria-busy'));
  }).observe(log, { attributes: true, attributeFilter: ['aria-busy'], attributeOldValue: true });
}"""


def test_one_announcement_per_streamed_reply(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "listener")
    set_settings(page, temperature=0, max_new_tokens=40)
    box = page.get_by_label("Message", exact=True)
    box.fill("Hello")
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    ready(page)
    settle_reply(page)
    # The first reply's own announcement may land after the watch starts (it
    # waits a tick), so it is told apart by its whole text.
    raw = page.locator(LAST_REPLY).evaluate("li => li._raw ?? li.querySelector('.md').textContent")
    first = ("Assistant said: " + raw).strip()

    # The transcript is not inside any live region.
    inside = page.evaluate("() => !!document.querySelector('#transcript').closest('[aria-live], [role=log]')")
    assert not inside
    regions = page.evaluate(WATCH_LIVE_REGIONS)
    assert "reply-announcer" in regions and "errors" in regions and "connection-status" in regions
    page.evaluate(WATCH_BUSY)
    box.fill("Tell me about the sea in three sentences.")
    box.press("Enter")
    expect(page.locator("#transcript li.msg-assistant")).to_have_count(2)
    settle_reply(page)
    expect(page.locator("#conversation-log")).not_to_have_attribute("aria-busy", "true")
    assert "true" in page.evaluate("() => window.busyValues")  # busy while the reply streamed
    reply = page.locator(LAST_REPLY).locator(".md").text_content()
    page.wait_for_function(
        "first => window.announcements.some(([id, text]) => id === 'reply-announcer' && text !== first)", arg=first
    )
    announced = page.evaluate("() => window.announcements")
    replies = [text for region, text in announced if region == "reply-announcer" and text != first]
    assert len(replies) == 1, announced
    assert replies[0].startswith("Assistant said: ") and reply.strip()[:40] in replies[0], (replies, reply)
    others = [entry for entry in announced if entry[0] != "reply-announcer" and entry[0] != "composer-status"]
    assert others == [], others
    problems.check()
    close(context)
