"""Photograph the chat list, the edit box, the 404 page and the API key page into docs/feel/ (`make screenshots`).

`python scripts/feel_screenshots.py [TAG]` writes docs/feel/<page>-<TAG>.png
(TAG: "after", the default). Run from a checkout of an older commit with
TAG "before", it shows what issue 30 changed: the script uses only what both
versions of the page have (labels, the settings drawer, the ⋯ menu). A real
daphne (tests/live_server.py, the real model) and Debian's chromium.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.live_server import start_daphne  # noqa: E402

OUT = REPO / "docs" / "feel"
PASSWORD = "a-long-Passw0rd!"
expect.set_options(timeout=300_000)  # replies come from the real model on the CPU
CHATS = ["Plan a weekend trip to Lisbon with a tight budget", "Explain recursion to a child", "Tea or coffee?"]


def chat(page, base: str, text: str) -> None:
    page.goto(base + "/")
    expect(page.locator("html")).to_have_attribute("data-ready", "1")
    page.get_by_role("button", name="Chat settings").click()
    page.locator("#set-max-tokens").fill("8")
    page.keyboard.press("Escape")
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")
    reply = page.locator("#transcript li.msg-assistant").last
    expect(reply.locator(".msg-meta")).to_contain_text("token")


def shoot(page, name: str, tag: str, locator=None) -> None:
    path = OUT / f"{name}-{tag}.png"
    (locator or page).screenshot(path=str(path))
    print(f"screenshots: {path.relative_to(REPO)}")


def main() -> int:
    tag = sys.argv[1] if len(sys.argv) > 1 else "after"
    OUT.mkdir(exist_ok=True)
    server = start_daphne()
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 760})
            page.goto(server.url + "/accounts/signup/")
            page.get_by_label("Username").fill("ada")
            page.get_by_label("Password", exact=True).fill(PASSWORD)
            page.get_by_label("Password confirmation").fill(PASSWORD)
            page.get_by_role("button", name="Sign up").click()
            for text in CHATS:
                chat(page, server.url, text)
            page.locator("details.menu summary").click()
            page.get_by_role("button", name="Pin to the top", exact=True).click()
            expect(page.locator("html")).to_have_attribute("data-ready", "1")
            page.get_by_role("link", name=CHATS[1]).first.click()
            expect(page.locator("html")).to_have_attribute("data-ready", "1")
            page.mouse.move(640, 300)
            shoot(page, "list", tag, page.locator("#sidebar"))
            page.get_by_role("button", name="Edit your message").click()
            page.mouse.move(640, 700)
            shoot(page, "edit", tag)
            page.goto(f"{server.url}/c/{uuid.uuid4()}/")
            shoot(page, "not-found", tag)
            page.goto(server.url + "/settings/keys/")
            page.get_by_label("Name").fill("laptop")
            page.get_by_role("button", name="Create a key").click()
            expect(page.locator("code, #new-key").first).to_be_visible()
            shoot(page, "api-key", tag)
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
