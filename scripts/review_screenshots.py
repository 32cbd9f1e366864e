"""Retake docs/review-queue.png and docs/usage.png (`make screenshots`).

A real daphne with its own temporary database and the real model:
`batch_prompts` answers a few prompts for three users (real replies, real
token counts and timings), a few of them are rated the way a user would
through the page's endpoint, then a superuser's chromium photographs the
admin's review queue, one rated reply, and the usage page. The tests never
write into docs/; this and scripts/screenshots.py are the only things that do.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from playwright.sync_api import expect, sync_playwright  # noqa: E402

from tests.browser_support import CHROMIUM, CHROMIUM_ARGS  # noqa: E402
from tests.live_server import start_daphne  # noqa: E402

DOCS = REPO / "docs"
PASSWORD = "a-long-Passw0rd!"
PROMPTS = {
    "ada": ["What is 17 times 23?", "Name the capital of Australia.", "Write a haiku about tea."],
    "grace": ["Explain recursion in one sentence.", "What is the boiling point of water in Kelvin?"],
    "linus": ["Suggest a name for a cat."],
}
# (user, prompt, rating, comment): what the users said about the replies.
RATINGS = [
    ("ada", "What is 17 times 23?", -1, "The product is 391; the reply got it wrong."),
    ("grace", "What is the boiling point of water in Kelvin?", -1, "Should be about 373 K."),
    ("ada", "Write a haiku about tea.", 1, "Lovely."),
    ("linus", "Suggest a name for a cat.", 1, ""),
]
SEED = """
from django.contrib.auth import get_user_model
from conversations.review import feedback as review
from conversations.models import Message
User = get_user_model()
User.objects.create_superuser("admin", password={password!r})
for username, prompt, rating, comment in {ratings!r}:
    reply = Message.objects.filter(
        conversation__user__username=username, conversation__title=prompt, role="assistant"
    ).get()
    review.rate(reply, rating, comment)
"""


def manage(server, *args: str, stdin: str | None = None) -> None:
    subprocess.run([sys.executable, "manage.py", *args], cwd=REPO, env=server.env, input=stdin, text=True, check=True)


def main() -> int:
    server = start_daphne()
    try:
        for user, prompts in PROMPTS.items():
            path = server.workdir / f"{user}.txt"
            path.write_text("\n".join(prompts) + "\n", encoding="utf-8")
            manage(
                server, "batch_prompts", str(path), "--user", user, "--max-new-tokens", "48", "-q", "-o", "/dev/null"
            )
        manage(server, "shell", "-c", SEED.format(password=PASSWORD, ratings=RATINGS))
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(server.url + "/admin/login/")
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill(PASSWORD)
            page.get_by_role("button", name="Log in").click()
            shots = {
                "review-queue": "/admin/conversations/feedback/",
                "usage": "/admin/conversations/dailyusage/",
            }
            for name, path in shots.items():
                page.goto(server.url + path)
                expect(page.locator("#content")).to_be_visible()
                page.screenshot(path=str(DOCS / f"{name}.png"), full_page=True)
                print(f"screenshots: docs/{name}.png")
            page.goto(server.url + shots["review-queue"])
            page.locator("#result_list tbody tr").first.locator("a").first.click()
            expect(page.locator(".review-context")).to_be_visible()
            page.screenshot(path=str(DOCS / "review-reply.png"), full_page=True)
            print("screenshots: docs/review-reply.png")
            browser.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
