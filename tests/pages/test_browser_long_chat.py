"""A long transcript in a real browser (issue 29, item 12): the page shows the newest messages and loads
earlier pages as the reader scrolls up, keeping their place."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import expect

from tests.browser_support import new_page, ready, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_scrolling_up_loads_earlier_pages_until_the_first_message(browser, daphne_server):
    context, page, problems = new_page(browser)
    sign_up(page, daphne_server.url, "longreader")
    roles = ("user", "assistant")
    export = {"title": "Long", "messages": [{"role": roles[i % 2], "content": f"message {i}"} for i in range(250)]}
    csrf = next(c["value"] for c in context.cookies() if c["name"] == "csrftoken")
    upload = {"name": "export.json", "mimeType": "application/json", "buffer": json.dumps(export).encode()}
    response = page.request.post(
        daphne_server.url + "/c/import/",
        multipart={"file": upload},
        headers={"X-CSRFToken": csrf, "Referer": daphne_server.url + "/", "Accept": "application/json"},
    )
    assert response.ok, response.text()
    conversation_id = response.json()["conversations"][0]["id"]
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
    context.close()
