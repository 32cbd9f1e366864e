"""End to end: a real daphne process with the real default model; a real WebSocket, and a real browser.

The session's server on the real model (`real_daphne_server`) serves only
this module, so one xdist worker starts it. The browser flow (sign up, chat,
reload mid-reply, stop, markdown safety) shares one page, since each step
builds on the conversation the previous one made: the real model writes at a
reader's pace, so the page is caught mid-reply. Its waits are Playwright's
(expect / wait_for_function), never sleeps.
"""

import asyncio
import json
import re

import pytest
import requests
import websockets
from playwright.sync_api import Page, expect

from tests.browser_support import close, new_page, ready, set_settings, sign_up_in_the_form
from tests.clients import frames_until_end, joined_tokens, new_conversation, open_socket, sign_up

pytestmark = pytest.mark.e2e


async def chat_turn(server, session, conversation_id: str, text: str) -> list[dict]:
    async with open_socket(server.ws_url, conversation_id, session, origin=server.url) as socket:
        await socket.send(json.dumps({"type": "send", "content": text, "params": {"max_new_tokens": 24}}))
        return await frames_until_end(socket, timeout=120)


def test_a_user_chats_with_the_real_model_over_a_real_socket(real_daphne_server):
    base = real_daphne_server.url
    health = requests.get(f"{base}/healthz").json()
    assert health["status"] == "ok" and health["device"] == "cpu"

    session = sign_up(base, "erin")
    conversation_id = new_conversation(session, base)  # greedy
    frames = asyncio.run(chat_turn(real_daphne_server, session, conversation_id, "What is the capital of France?"))

    assert [f["type"] for f in frames][:2] == ["message", "start"]
    assert frames[-1]["type"] == "end", frames[-1]
    streamed = joined_tokens(frames)
    assert "Paris" in streamed

    stored = session.get(f"{base}/api/conversations/{conversation_id}/").json()
    assert [m["role"] for m in stored["messages"]] == ["user", "assistant"]
    assert stored["messages"][1]["content"] == streamed
    assert stored["messages"][1]["status"] == "complete"
    assert stored["title"] == "What is the capital of France?"


def test_a_foreign_origin_is_refused_by_the_real_server(real_daphne_server):
    session = sign_up(real_daphne_server.url, "frank")
    conversation_id = new_conversation(session, real_daphne_server.url)

    async def attempt():
        async with open_socket(real_daphne_server.ws_url, conversation_id, session, origin="http://evil.example"):
            pass

    with pytest.raises(websockets.exceptions.InvalidStatus):
        asyncio.run(attempt())


LAST_REPLY = "() => [...document.querySelectorAll('#transcript li.msg-assistant')].pop() || null"


def reply_count(page: Page) -> int:
    return page.locator("#transcript li.msg-assistant").count()


def reply_length(page: Page) -> int:
    return page.evaluate(
        f"() => {{ const li = ({LAST_REPLY})(); return li ? li.querySelector('.md').textContent.length : 0; }}"
    )


def send(page: Page, text: str) -> None:
    """Type a message and press Enter; wait until its reply has started."""
    before = reply_count(page)
    composer = page.get_by_label("Message", exact=True)
    composer.fill(text)
    composer.press("Enter")
    expect(page.locator("#transcript li.msg-assistant")).to_have_count(before + 1)


def wait_streaming_text(page: Page, at_least: int = 1) -> int:
    """Wait until the last reply is streaming with at least `at_least` characters."""
    page.wait_for_function(
        f"n => {{ const li = ({LAST_REPLY})(); return li && li.dataset.status === 'streaming'"
        " && li.querySelector('.md').textContent.length >= n; }",
        arg=at_least,
    )
    return reply_length(page)


def wait_reply_end(page: Page) -> None:
    page.wait_for_function(f"() => {{ const li = ({LAST_REPLY})(); return li && li.dataset.status !== 'streaming'; }}")


@pytest.mark.browser
def test_chatting_streaming_reload_stop_and_safe_markdown(browser, real_daphne_server):
    # The real model: it writes at a reader's pace, so the page is seen mid-reply (growing, reloaded, stopped).
    base = real_daphne_server.url
    context, page, problems = new_page(browser)
    sign_up_in_the_form(page, base, "browser-tester")

    # The welcome page: a new chat with its settings, started by the first message.
    expect(page.get_by_role("heading", name="What shall we talk about?")).to_be_visible()
    set_settings(page, temperature=0, max_new_tokens=32)
    send(page, "Write a Python function that adds two numbers.")
    expect(page).to_have_url(re.compile(r"/c/[0-9a-f-]{36}/$"))
    conversation_url = page.url
    user_bubble = page.locator("#transcript li.msg-user").first
    expect(user_bubble).to_contain_text("Write a Python function that adds two numbers.")
    # The sidebar lists the new chat, highlighted, titled from the message.
    current = page.locator(".conv.current a[aria-current=page]")
    expect(current).to_have_text("Write a Python function that adds two numbers.")
    expect(page.get_by_role("button", name="Stop generating")).to_be_visible()

    # The reply appears token by token: its text grows while it streams.
    first_length = wait_streaming_text(page)
    page.wait_for_function(f"n => ({LAST_REPLY})().querySelector('.md').textContent.length > n", arg=first_length)
    wait_reply_end(page)
    first_reply = page.locator("#transcript li.msg-assistant").last
    expect(first_reply).to_have_attribute("data-status", "complete")
    expect(first_reply.locator(".msg-meta")).to_contain_text(re.compile(r"\d+ tokens? · [\d.]+ tok/s"))
    expect(page.get_by_role("button", name="Send message")).to_be_visible()
    expect(page.get_by_role("button", name="Regenerate this reply")).to_be_visible()

    # Reload while a reply streams: it picks up where it was and runs to the end.
    # Greedy here and below: a sampled reply may end before the step can act on it.
    set_settings(page, temperature=0, max_new_tokens=48)
    send(page, "Tell me a long story about a dragon who learns to cook.")
    length_before_reload = wait_streaming_text(page, at_least=8)
    reply_id = page.evaluate(f"() => ({LAST_REPLY})().dataset.id")
    page.reload()
    ready(page)
    resumed = page.locator(f'#transcript li.msg-assistant[data-id="{reply_id}"]')
    expect(resumed).to_have_count(1)
    wait_reply_end(page)
    expect(resumed).not_to_have_attribute("data-status", "streaming")
    final_text = resumed.locator(".md").text_content()
    assert len(final_text) > length_before_reload, (length_before_reload, final_text)
    expect(resumed.locator(".msg-meta")).to_contain_text(re.compile(r"\d+ tokens?"))

    # Reload again: the whole history is there, rendered from the server.
    page.reload()
    ready(page)
    expect(page.locator("#transcript li.msg-user")).to_have_count(2)
    expect(page.locator("#transcript li.msg-assistant")).to_have_count(2)
    expect(resumed.locator(".md")).to_have_text(final_text)
    expect(page.locator("#transcript li.msg-user").nth(1)).to_contain_text("a dragon who learns to cook")

    # Markup in a message is text and a fenced block a <pre><code>; and Stop on
    # a long reply keeps it, marked stopped.
    set_settings(page, max_new_tokens=1024)
    send(
        page,
        "Write a very long essay about the history of computers. "
        "Quote this first: <img src=x onerror=alert(1)>\n\n```python\nprint(1)\n```",
    )
    mine = page.locator("#transcript li.msg-user").last
    expect(mine).to_contain_text("Quote this first: <img src=x onerror=alert(1)>")
    expect(mine.locator("pre code")).to_have_text("print(1)")
    expect(mine.locator("pre code")).to_have_class(re.compile(r"\blanguage-python\b"))
    wait_streaming_text(page, at_least=20)
    page.get_by_role("button", name="Stop generating").click()
    stopped = page.locator("#transcript li.msg-assistant").last
    expect(stopped).to_have_attribute("data-status", "cancelled")
    expect(stopped.locator(".badge-cancelled")).to_have_text("Stopped")
    stopped_text = stopped.locator(".md").text_content()
    assert len(stopped_text) >= 20
    expect(page.get_by_role("button", name="Send message")).to_be_visible()
    expect(page.locator("#transcript img")).to_have_count(0)

    # After a reload both are as they were, rendered from the stored transcript.
    page.reload()
    ready(page)
    mine = page.locator("#transcript li.msg-user").last
    expect(mine).to_contain_text("Quote this first: <img src=x onerror=alert(1)>")
    expect(mine.locator("pre code")).to_have_text("print(1)")
    expect(page.locator("#transcript img")).to_have_count(0)
    stopped = page.locator("#transcript li.msg-assistant").last
    expect(stopped).to_have_attribute("data-status", "cancelled")
    expect(stopped.locator(".badge-cancelled")).to_have_text("Stopped")
    expect(stopped.locator(".md")).to_have_text(stopped_text)
    assert page.url == conversation_url

    problems.check()
    close(context)
