"""Branches, search and archive in chromium against a real daphne (the session's, on the tiny model).

One flow on one conversation: regenerate keeps variants ("‹ 2 / 2 ›"), the
arrows switch between them in every tab, the edit pencil resends (Enter) or
cancels (Escape) with focus kept, the sidebar search highlights matches, and
archiving moves the chat to the Archived view; the edit box's Send and Cancel
buttons, and the Latest button beside the text; Continue; archive and unpin
with Undo. axe-core checks the page with all of it showing; every page keeps
the site's Content-Security-Policy and fails on any violation or console error.
"""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import (
    LAST_REPLY,
    REPO,
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

FIRST_USER = "#transcript li.msg-user >> nth=0"


def short_replies(page: Page) -> None:
    set_settings(page, max_new_tokens=6)


def test_edit_variants_search_and_archive(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "branch-user")
    short_replies(page)
    box = page.get_by_label("Message", exact=True)
    box.fill("Tell me about lighthouses")
    box.press("Enter")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    settle_reply(page)
    chat_url = page.url
    first_reply = page.locator(LAST_REPLY).get_attribute("data-id")

    # A second tab on the same chat, which must follow along.
    other_context, other, other_problems = new_page(browser)
    other.context.add_cookies(context.cookies())
    other.goto(chat_url)
    ready(other)

    # Regenerate keeps the old reply as a variant: "2 / 2" with arrows.
    page.get_by_role("button", name="Regenerate this reply").click()
    expect(page.locator(f'#transcript li.msg[data-id="{first_reply}"]')).to_have_count(0)
    settle_reply(page)
    expect(page.locator(LAST_REPLY).locator(".branch-count")).to_contain_text("2 / 2")
    expect(other.locator(LAST_REPLY).locator(".branch-count")).to_contain_text("2 / 2")
    second_reply = page.locator(LAST_REPLY).get_attribute("data-id")

    # The arrow switches back to the first variant, in both tabs, and keeps focus on the arrows.
    previous = page.get_by_role("button", name="Previous version of this reply")
    previous.focus()
    page.keyboard.press("Enter")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-id", first_reply)
    expect(page.locator(LAST_REPLY).locator(".branch-count")).to_contain_text("1 / 2")
    expect(other.locator(LAST_REPLY)).to_have_attribute("data-id", first_reply)
    page.wait_for_function("() => document.activeElement.closest('.msg-branches') !== null")
    page.get_by_role("button", name="Next version of this reply").click()
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-id", second_reply)
    expect(other.locator(LAST_REPLY)).to_have_attribute("data-id", second_reply)

    # Edit: Escape cancels and gives focus back to the pencil.
    pencil = page.locator(FIRST_USER).get_by_role("button", name="Edit your message")
    pencil.click()
    editor = page.get_by_role("textbox", name=re.compile("^Edit your message"))
    expect(editor).to_be_focused()
    expect(editor).to_have_value("Tell me about lighthouses")
    page.keyboard.press("Escape")
    expect(editor).to_have_count(0)
    expect(pencil).to_be_focused()
    expect(page.locator(FIRST_USER).locator(".md")).to_have_text("Tell me about lighthouses")

    # Edit: Enter resends; the new message is "2 / 2" and the old branch leaves the page.
    pencil.click()
    editor.fill("Tell me about harbours")
    editor.press("Enter")
    expect(page.locator(FIRST_USER).locator(".md")).to_have_text("Tell me about harbours")
    expect(page.locator(FIRST_USER).locator(".branch-count")).to_contain_text("2 / 2")
    settle_reply(page)
    expect(page.locator("#transcript li.msg")).to_have_count(2)
    expect(other.locator(FIRST_USER).locator(".md")).to_have_text("Tell me about harbours")
    expect(other.locator("#transcript li.msg")).to_have_count(2)
    # The old question is one arrow away.
    page.locator(FIRST_USER).get_by_role("button", name="Previous version of this message").click()
    expect(page.locator(FIRST_USER).locator(".md")).to_have_text("Tell me about lighthouses")
    expect(page.locator(LAST_REPLY)).to_have_attribute("data-id", second_reply)

    # Search finds words in messages (not only titles) and highlights them as text.
    search = page.get_by_label("Search your chats")
    search.fill("harbour")
    result = page.locator(".conv-list .conv")
    expect(result).to_have_count(1)
    expect(result.locator(".conv-snippet mark")).to_have_text(re.compile("^harbour", re.I))
    found = audit(page, "branches and search")
    search.fill("no such words anywhere")
    expect(result).to_have_count(0)
    search.fill("")
    expect(result).to_have_count(1)

    # Archive from the ⋯ menu: the open chat is now listed in the Archived view, and gone from the chats.
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Archive", exact=True).click()
    expect(page).to_have_url(chat_url)
    ready(page)
    expect(page.locator(".sidebar-nav h2")).to_have_text("Archived chats")
    expect(page.locator(".conv-list .conv")).to_have_count(1)
    found += audit(page, "archived view")
    page.get_by_label("Which chats to list").select_option(label="Chats")
    expect(page.locator(".conv-list .conv")).to_have_count(0)
    assert found == [], "\n".join(found)
    other_problems.check()
    problems.check()
    close(other_context)
    close(context)


def test_editing_has_visible_send_and_cancel_and_latest_covers_no_text(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "edit-buttons-user")
    # Paragraphs, not lines: Markdown joins single newlines into one paragraph, which left the
    # transcript about 100 px to scroll, and a short reply from the tiny model made that less than
    # what counts as "at the bottom" (transcript.js, NEAR_BOTTOM_PX): no Latest button to find.
    new_chat(page, "\n\n".join(f"Line {n} of a long message" for n in range(60)), max_new_tokens=6)

    # Scrolled up, the Latest button sits beside the text, over none of it.
    page.mouse.move(640, 400)
    page.mouse.wheel(0, -5000)
    latest = page.get_by_role("button", name="Latest")
    expect(latest).to_be_visible()
    overlaps = latest.evaluate(
        """button => { const b = button.getBoundingClientRect();
             return [...document.querySelectorAll('#transcript .msg-inner')].some(m => {
               const r = m.getBoundingClientRect();
               return r.left < b.right && b.left < r.right && r.top < b.bottom && b.top < r.bottom; }); }"""
    )
    assert not overlaps
    latest.click()

    # Edit has buttons as well as keys: Cancel puts the message back, Send resends it.
    page.get_by_role("button", name="Edit your message").click()
    page.get_by_role("button", name="Cancel").click()
    expect(page.locator(".edit-box")).to_have_count(0)
    expect(page.locator(FIRST_USER).locator(".bubble")).to_be_visible()
    page.get_by_role("button", name="Edit your message").click()
    page.locator(".edit-input").fill("A short message instead")
    page.get_by_role("button", name="Send", exact=True).click()
    expect(page.locator(FIRST_USER)).to_contain_text("A short message instead")
    expect(page.locator(FIRST_USER).locator(".branch-count")).to_contain_text("2 / 2")
    settle_reply(page)
    problems.check()
    close(context)


def test_a_reply_cut_short_offers_continue_which_extends_it_in_place(browser, daphne_server):
    context, page, problems = new_page(browser)
    sign_up(page, daphne_server.url, "continue-user")
    url = new_chat(page, "Tell me a long story", max_new_tokens=6)
    reply = page.locator(LAST_REPLY)
    expect(reply.locator(".msg-meta")).to_contain_text("hit the token limit")
    conversation_id = url.rstrip("/").rsplit("/", 1)[-1]

    def stored_reply() -> dict:
        return page.evaluate(f"fetch('/api/conversations/{conversation_id}/').then(r => r.json())")["messages"][-1]

    before = stored_reply()
    reply.get_by_role("button", name="Continue this reply from where it stopped").click()
    expect(reply.locator(".msg-meta")).to_contain_text("12 tokens")
    # The same reply, grown in place, on the page as in the database.
    after = stored_reply()
    assert after["id"] == before["id"] == int(reply.get_attribute("data-id"))
    assert after["content"].startswith(before["content"]) and len(after["content"]) > len(before["content"])
    assert page.locator("#transcript li.msg-assistant").count() == 1
    page.reload()
    ready(page)
    expect(reply.locator(".msg-meta")).to_contain_text("12 tokens")
    expect(reply.get_by_role("button", name="Continue this reply from where it stopped")).to_be_visible()
    problems.check()
    close(context)


def test_archive_and_unpin_say_so_with_undo_and_an_archived_chat_opens_in_its_view(browser, daphne_server):
    context, page, problems = new_page(browser)
    sign_up(page, daphne_server.url, "undo-user")
    url = new_chat(page, "A chat to put away")
    toast = page.locator(".flashes .alert")

    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Pin to the top").click()
    ready(page)
    expect(toast).to_contain_text("Pinned “A chat to put away”")
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Unpin", exact=True).click()
    ready(page)
    expect(toast).to_contain_text("Unpinned “A chat to put away”.")
    toast.get_by_role("button", name="Undo").click()
    ready(page)
    expect(page.locator(".conv-list .conv.pinned")).to_have_count(1)

    # Archived, it leaves the list: the page says where it went, and Undo brings it back.
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Archive", exact=True).click()
    ready(page)
    expect(toast).to_contain_text("it is in the Archived view of the chat list")
    # The open chat's view is the one that lists it, with the chat marked as the current one.
    expect(page.get_by_label("Which chats to list")).to_have_value("archived=1")
    expect(page.locator(".sidebar-nav h2")).to_have_text("Archived chats")
    expect(page.locator(".conv-list .conv.current a")).to_have_attribute("aria-current", "page")
    toast.get_by_role("button", name="Undo").click()
    ready(page)
    expect(toast).to_contain_text("“A chat to put away” is back in your chats.")
    expect(page.get_by_label("Which chats to list")).to_have_value("source=web,import")
    expect(page.locator(".conv-list .conv.current")).to_have_count(1)
    assert page.url == url
    problems.check()
    close(context)


AGE = """
from datetime import timedelta
from django.utils import timezone
from conversations.models import Conversation
for title, days in {ages!r}:
    Conversation.objects.filter(user__username={username!r}, title=title).update(
        updated_at=timezone.now() - timedelta(days=days))
"""


def test_the_list_has_date_groups_and_pin_and_archive_on_each_row_with_undo(browser, daphne_server):
    context, page, problems = new_page(browser)
    base = daphne_server.url
    sign_up(page, base, "rows-user")
    for title in ("An old chat", "Yesterday's chat", "Today's chat"):
        page.goto(base + "/")
        ready(page)
        new_chat(page, title)
    ages = [("An old chat", 40), ("Yesterday's chat", 1)]
    script = AGE.format(ages=ages, username="rows-user")
    subprocess.run(
        [sys.executable, "manage.py", "shell", "-c", script], cwd=REPO, env=daphne_server.env, check=True, timeout=120
    )
    page.reload()
    ready(page)
    groups = page.locator(".conv-list .conv-group h3")
    expect(groups).to_have_text(["Today", "Yesterday", "Older"])
    rows = page.locator(".conv-list .conv")
    expect(rows).to_have_count(3)

    toast = page.locator("#toasts .alert")

    def row_button(title: str, name: str):
        rows.filter(has_text=title).hover()  # a row's buttons show on hover and focus
        return page.get_by_role("button", name=name)

    row_button("An old chat", "Pin An old chat").click()
    expect(toast).to_contain_text("Pinned “An old chat”.")
    expect(groups).to_have_text(["Pinned", "Today", "Yesterday"])
    expect(rows.first).to_contain_text("An old chat")

    row_button("Yesterday's chat", "Archive Yesterday's chat").click()
    expect(toast).to_contain_text("Archived “Yesterday's chat”: it is in the Archived view of the list.")
    expect(rows).to_have_count(2)
    toast.get_by_role("button", name="Undo").click()
    expect(rows).to_have_count(3)
    expect(groups).to_have_text(["Pinned", "Today", "Yesterday"])
    row_button("An old chat", "Unpin An old chat").click()
    expect(toast).to_contain_text("Unpinned “An old chat”.")
    expect(groups).to_have_text(["Today", "Yesterday", "Older"])
    problems.check()
    close(context)


def test_a_temporary_chat_is_marked_and_unlisted_and_a_delete_offers_undo(browser, daphne_server):
    context, page, problems = new_page(browser)
    base = daphne_server.url
    sign_up(page, base, "temporary-user")
    kept_url = new_chat(page, "A chat to keep")
    page.goto(base + "/")
    ready(page)
    page.get_by_label("Temporary chat").check()
    temporary_url = new_chat(page, "A passing question")
    expect(page.locator("#temporary-badge")).to_have_text("Temporary")
    rows = page.locator(".conv-list .conv")
    expect(rows).to_have_text(["A chat to keep"])
    assert audit(page, "a temporary chat") == []

    # Deleting another chat from its row stays on this page, which says so, with Undo.
    rows.filter(has_text="A chat to keep").hover()
    page.get_by_role("button", name="Delete A chat to keep").click()
    flash = page.locator(".flashes .alert")
    expect(flash).to_contain_text("Deleted “A chat to keep”.")
    assert page.url == temporary_url
    expect(rows).to_have_count(0)
    flash.get_by_role("button", name="Undo").click()
    expect(page).to_have_url(kept_url)
    expect(page.locator(".flashes .alert")).to_contain_text("“A chat to keep” is back in your chats.")
    expect(rows).to_have_text(["A chat to keep"])

    # Deleting the open chat from its menu goes to a new chat.
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Delete chat").click()
    expect(page).to_have_url(base + "/")
    expect(page.locator(".flashes .alert")).to_contain_text("Deleted “A chat to keep”.")
    problems.check()
    close(context)


def test_an_assistant_made_on_its_page_starts_a_new_chat(browser, daphne_server):
    context, page, problems = new_page(browser)
    base = daphne_server.url
    sign_up(page, base, "assistant-user")
    page.goto(base + "/assistants/")
    page.get_by_label("Name").fill("Haiku poet")
    page.get_by_label("System prompt").fill("Answer with a haiku.")
    page.get_by_label("Temperature").fill("0.3")
    page.get_by_label("Max new tokens").fill("4")  # the chat takes the assistant's parameters: a short reply
    page.get_by_role("button", name="Create the assistant").click()
    expect(page.locator(".flashes .alert")).to_contain_text("Created “Haiku poet”.")
    assert audit(page, "the assistants page") == []

    page.goto(base + "/")
    ready(page)
    page.get_by_label("Assistant", exact=True).select_option(label="Haiku poet")
    new_chat(page, "The sea at night")
    expect(page.locator("#chat-assistant")).to_have_text("Haiku poet")
    page.get_by_role("button", name="Chat settings").click()
    expect(page.get_by_label("System prompt")).to_have_value("Answer with a haiku.")
    problems.check()
    close(context)


def test_a_share_link_renders_the_snapshot_safely_and_continues_it(browser, daphne_server):
    context, page, problems = new_page(browser)
    base = daphne_server.url
    sign_up(page, base, "share-user")
    new_chat(page, "Tell me about **lighthouses** <img src=x onerror=alert(1)>")
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Share a link").click()
    flash = page.locator(".flashes .alert")
    expect(flash).to_contain_text("Shared: ")
    url = re.search(r"http://\S+/s/[\w-]+/", flash.inner_text()).group(0)

    page.goto(url)
    first = page.locator(".shared-transcript li.msg-user .md")
    expect(first.locator("strong")).to_have_text("lighthouses")  # the chat's renderer, markdown and all
    expect(first.locator("img")).to_have_count(0)  # and its defences: raw HTML stays text
    expect(page.locator("#sidebar")).to_have_count(0)  # nothing else of its owner
    assert audit(page, "a shared chat") == []
    page.get_by_role("button", name="Continue this chat").click()
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    ready(page)
    expect(page.locator("#transcript li.msg-user")).to_have_count(1)
    problems.check()
    close(context)
