"""A long transcript in a real browser (issue 29, item 12): the page shows the newest messages and loads
earlier pages as the reader scrolls up, keeping their place."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser_support import audit, close, new_page, ready, set_settings, settle_reply, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def import_chat(page, base_url: str, export: dict) -> str:
    """The id of the chat `export` (Chatsite's export format) imports as the page's user."""
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    upload = {"name": "export.json", "mimeType": "application/json", "buffer": json.dumps(export).encode()}
    response = page.request.post(
        base_url + "/c/import/",
        multipart={"file": upload},
        headers={"X-CSRFToken": csrf, "Referer": base_url + "/", "Accept": "application/json"},
    )
    assert response.ok, response.text()
    return response.json()["conversations"][0]["id"]


def test_scrolling_up_loads_earlier_pages_until_the_first_message(browser, daphne_server):
    context, page, problems = new_page(browser)
    sign_up(page, daphne_server.url, "longreader")
    roles = ("user", "assistant")
    export = {"title": "Long", "messages": [{"role": roles[i % 2], "content": f"message {i}"} for i in range(250)]}
    conversation_id = import_chat(page, daphne_server.url, export)
    page.goto(f"{daphne_server.url}/c/{conversation_id}/")
    ready(page)
    bubbles = page.locator("#transcript li.msg")
    expect(bubbles).to_have_count(100)
    expect(bubbles.last).to_contain_text("message 249")
    for shown in (200, 250):
        page.evaluate("() => { document.querySelector('#scroller').scrollTop = 0; }")
        expect(bubbles).to_have_count(shown)
    expect(bubbles.first).to_contain_text("message 0")
    expect(page.locator("[data-earlier]")).to_have_count(0)
    problems.check()
    close(context)


def test_a_chat_past_the_models_context_shows_where_its_summary_applies(browser, daphne_server):
    context, page, problems = new_page(browser)
    sign_up(page, daphne_server.url, "summaryreader")
    fact = "Remember this: my sister's name is Oriel."
    filler = "The harbour lights flicker while the fishing boats come home at dusk. " * 14
    turns = [fact, "Noted.", *[f"{n}. {filler}" if n % 2 == 0 else "Noted." for n in range(12)]]
    messages = [{"role": ("user", "assistant")[i % 2], "content": text} for i, text in enumerate(turns)]
    conversation_id = import_chat(page, daphne_server.url, {"title": "Past the context", "messages": messages})
    page.goto(f"{daphne_server.url}/c/{conversation_id}/")
    ready(page)
    expect(page.locator(".summary-note")).to_have_count(0)
    # The tiny model's context is 1024 tokens: this turn has the oldest turns summarised first.
    set_settings(page, max_new_tokens=4)
    box = page.get_by_label("Message", exact=True)
    box.fill("What was her name?")
    box.press("Enter")
    settle_reply(page)
    note = page.locator(".summary-note")
    expect(note).to_have_count(1)
    expect(note.locator("summary")).to_have_text("Earlier messages summarised")
    expect(note.locator(".summary-text")).not_to_be_visible()  # its text on demand
    note.locator("summary").click()
    expect(note.locator(".summary-text")).to_contain_text(fact)
    summarised = page.locator("#transcript li.msg", has=note)
    expect(summarised).to_have_attribute("data-role", "assistant")
    until = summarised.get_attribute("data-id")
    assert audit(page, "a summarised chat") == []
    # A reload shows it where the server says it applies.
    page.reload()
    ready(page)
    expect(page.locator(f"#transcript li.msg[data-id='{until}'] .summary-note")).to_have_count(1)
    problems.check()
    close(context)
