"""The model's title in chromium: after a new chat's first reply, the top bar, the tab's title and the chat's
row in the list change to it (conversations.live.titles). A server of its own, with CHAT_TITLES on (the
session's server has it off: tests/live_server.py)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.browser_support import close, new_chat, new_page, sign_up
from tests.live_server import tiny_model

pytestmark = [pytest.mark.browser, pytest.mark.e2e]

FIRST = "Tell me about lighthouses on rocky coasts"


def test_the_models_title_replaces_the_first_line_in_the_top_bar_the_tab_and_the_list(
    browser, daphne_factory, tiny_model_dir
):
    server = daphne_factory({**tiny_model(tiny_model_dir), "CHAT_TITLES": "1"})
    context, page, problems = new_page(browser)
    sign_up(page, server.url, "titles-user")
    new_chat(page, FIRST)
    heading = page.locator("#chat-title")
    expect(heading).not_to_have_text(FIRST)  # the first line named it first; the model's title follows
    title = heading.inner_text()
    assert 2 <= len(title) <= 60 and title != "New chat"
    expect(page).to_have_title(re.compile(re.escape(title) + " · Chatsite"))
    expect(page.locator(".conv.current a")).to_have_text(title)
    page.reload()
    expect(page.locator(".conv.current a")).to_have_text(title)  # stored
    problems.check()
    close(context)
