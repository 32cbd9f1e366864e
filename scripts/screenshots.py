"""Retake docs/screenshot-light.png, docs/screenshot-dark.png and docs/screenshot-branches.png (`make screenshots`).

A real daphne (tests/live_server.py's start_daphne: its own temporary
database, the real model) and Debian's chromium: sign up, have a short chat
with code and math in it, photograph it in both themes. The tests never write
into docs/; this is the only thing that does.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.live_server import start_daphne  # noqa: E402

DOCS = REPO / "docs"
PASSWORD = "a-long-Passw0rd!"
expect.set_options(timeout=300_000)  # replies come from the real model on the CPU
PROMPTS = [
    "Write a Python function that adds two numbers.",
    "What is $\\int_0^1 x^2\\,dx$? Show the working.",
]


def main() -> int:
    server = start_daphne()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.set_default_timeout(300_000)
            page.on("pageerror", lambda error: print(f"screenshots: page error: {error}", file=sys.stderr))
            page.goto(server.url + "/accounts/signup/")
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_label("Password confirmation").fill(PASSWORD)
            page.get_by_role("button", name="Sign up").click()
            expect(page.locator("html")).to_have_attribute("data-ready", "1")
            page.get_by_role("button", name="Chat settings").click()
            page.locator("#set-temperature").fill("0")
            page.locator("#set-max-tokens").fill("64")
            page.keyboard.press("Escape")
            for number, prompt in enumerate(PROMPTS, start=1):
                box = page.get_by_label("Message", exact=True)
                box.fill(prompt)
                box.press("Enter")
                replies = page.locator("#transcript li.msg-assistant")
                expect(replies).to_have_count(number)
                expect(replies.last).not_to_have_attribute("data-status", "streaming")
                expect(replies.last.locator(".msg-meta")).to_contain_text("token")
            page.locator("#scroller").evaluate("node => { node.scrollTop = 0; }")
            page.mouse.move(5, 500)  # over the sidebar's empty space: nothing in a hover state
            for scheme in ("light", "dark"):
                page.emulate_media(color_scheme=scheme)
                expect(page.locator("html")).to_have_attribute("data-theme", scheme)
                page.screenshot(path=str(DOCS / f"screenshot-{scheme}.png"))
                print(f"screenshots: docs/screenshot-{scheme}.png")
            branches_and_search(page)
            browser.close()
    finally:
        server.stop()
    return 0


def branches_and_search(page) -> None:
    """A regenerated reply ("‹ 2 / 2 ›") and a search with its highlighted snippet, in the light theme."""
    page.emulate_media(color_scheme="light")
    replies = page.locator("#transcript li.msg-assistant")
    page.get_by_role("button", name="Regenerate this reply").click()
    expect(replies.last.locator(".branch-count")).to_contain_text("2 / 2")
    expect(replies.last).not_to_have_attribute("data-status", "streaming")
    expect(replies.last.locator(".msg-meta")).to_contain_text("token")
    page.get_by_label("Search your chats").fill("python")
    expect(page.locator(".conv-snippet mark").first).to_be_visible()
    page.mouse.move(5, 500)
    page.screenshot(path=str(DOCS / "screenshot-branches.png"))
    print("screenshots: docs/screenshot-branches.png")


if __name__ == "__main__":
    sys.exit(main())
