"""Thumbs up / down in chromium against a real daphne: keyboard, aria-pressed, a comment,
another tab following, the day's token use, and axe-core on the controls (0 violations).

On the session's daphne, whose daily token budget makes the page show what is left.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import LAST_REPLY, REPO, audit, close, new_page, ready, set_settings, settle_reply, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def thumbs(page: Page):
    reply = page.locator(LAST_REPLY)
    return reply.get_by_role("button", name="Good reply"), reply.get_by_role("button", name="Bad reply")


def chat_with_a_reply(page: Page, base: str, username: str) -> str:
    sign_up(page, base, username)
    set_settings(page, max_new_tokens=4)
    box = page.get_by_label("Message", exact=True)
    box.fill("Say hello")
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    settle_reply(page)
    return page.url


def test_thumbs_by_keyboard_with_a_comment_seen_by_another_tab(browser, daphne_server):
    context, page, problems = new_page(browser)  # CSP enforced: a violation fails the test
    url = chat_with_a_reply(page, daphne_server.url, "rater")
    other = context.new_page()
    other.goto(url)
    ready(other)
    good, bad = thumbs(page)
    other_good, other_bad = thumbs(other)
    expect(good).to_have_attribute("aria-pressed", "false")
    expect(bad).to_have_attribute("aria-pressed", "false")
    # The day's use, with what is left, under the composer.
    expect(page.locator("#usage-today")).to_contain_text(re.compile(r"tokens used today · [\d,]+ of 100,000 left"))

    # Keyboard only: Tab from Good reply reaches Bad reply; Space presses it.
    good.focus()
    page.keyboard.press("Tab")
    expect(bad).to_be_focused()
    page.keyboard.press("Space")
    expect(bad).to_have_attribute("aria-pressed", "true")
    expect(other_bad).to_have_attribute("aria-pressed", "true")  # the other tab follows

    comment = page.locator(LAST_REPLY).get_by_role("button", name="Add a comment")
    comment.focus()
    page.keyboard.press("Enter")
    expect(comment).to_have_attribute("aria-expanded", "true")
    field = page.get_by_label("Comment on this reply (optional)")
    expect(field).to_be_focused()
    page.keyboard.type("Too short to be useful.")
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")  # Save
    edit = page.locator(LAST_REPLY).get_by_role("button", name="Edit comment")
    expect(edit).to_be_focused()
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-comment", "Too short to be useful.")
    expect(other.locator(LAST_REPLY)).to_have_attribute("data-comment", "Too short to be useful.")

    # A reload shows the stored state.
    page.reload()
    ready(page)
    good, bad = thumbs(page)
    expect(bad).to_have_attribute("aria-pressed", "true")
    # Switching to a thumb up, then pressing it again, clears the rating.
    good.click()
    expect(good).to_have_attribute("aria-pressed", "true")
    expect(bad).to_have_attribute("aria-pressed", "false")
    expect(other_good).to_have_attribute("aria-pressed", "true")
    good.click()
    expect(good).to_have_attribute("aria-pressed", "false")
    expect(other_good).to_have_attribute("aria-pressed", "false")
    expect(other_bad).to_have_attribute("aria-pressed", "false")
    problems.check()
    close(context)


def test_axe_finds_nothing_on_the_feedback_controls(browser, daphne_server):
    context, page, problems = new_page(browser)
    chat_with_a_reply(page, daphne_server.url, "axe-rater")
    found: list[str] = []
    for scheme in ("light", "dark"):
        page.emulate_media(color_scheme=scheme)
        good, bad = thumbs(page)
        bad.click()
        expect(bad).to_have_attribute("aria-pressed", "true")
        page.locator(LAST_REPLY).get_by_role("button", name=re.compile("comment")).click()
        expect(page.get_by_label("Comment on this reply (optional)")).to_be_visible()
        found += audit(page, f"feedback ({scheme})")
        page.keyboard.press("Escape")
        bad.click()
        expect(bad).to_have_attribute("aria-pressed", "false")
    assert found == [], "\n".join(found)
    problems.check()
    close(context)


PROMOTE = """
from django.contrib.auth import get_user_model
from conversations.models import Message
from conversations.review import feedback
get_user_model().objects.filter(username={username!r}).update(is_staff=True, is_superuser=True)
reply = Message.objects.filter(conversation__user__username={username!r}, role="assistant").get()
feedback.rate(reply, -1, {comment!r})
"""


def test_the_admin_is_branded_and_its_review_queue_fits_1280_px(browser, daphne_server):
    context, page, problems = new_page(browser)
    chat_with_a_reply(page, daphne_server.url, "review-staff")
    comment = "The reply ignored the question entirely and " * 8 + "https://example.com/" + "a" * 120
    script = PROMOTE.format(username="review-staff", comment=comment)
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=REPO, env=daphne_server.env, check=True, timeout=120
    )
    page.goto(daphne_server.url + "/admin/conversations/feedback/")
    expect(page.locator("#site-name")).to_have_text("Chatsite administration")
    expect(page).to_have_title(re.compile("Chatsite"))
    expect(page.locator("#result_list tbody tr")).to_have_count(1)
    # Neither the page nor the table's own box scrolls sideways: long comments and replies wrap.
    overflow = page.evaluate(
        """() => [document.documentElement, document.querySelector('#changelist .results')]
                 .map(box => box.scrollWidth - box.clientWidth)"""
    )
    assert overflow == [0, 0], f"scrolls sideways by {overflow} px (page, table)"
    problems.check()
    close(context)
