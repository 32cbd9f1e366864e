"""The chat page in a real browser against the session's daphne on the tiny model.

Debian's chromium, driven by Playwright's sync API: the phone and keyboard,
the missing chat's page, API keys, the chat list and the composer. The flow
on the real model (sign up, chat, reload mid-reply, stop, markdown safety) is
in tests/live/test_e2e.py, beside the other tests of that server, so that one
worker starts it.
Waits are Playwright's (expect / wait_for_function), never sleeps; replies
are kept short with max_new_tokens wherever the step only needs some text.
"""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import Page, expect

from tests.browser_support import close, new_chat, new_page, ready, set_settings, settle_reply, sign_up

pytestmark = [pytest.mark.browser, pytest.mark.e2e]


def test_pages_work_on_a_phone_and_by_keyboard(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    page.set_viewport_size({"width": 390, "height": 844})
    sign_up(page, base, "phone-user")

    # The chat list is a menu: opened by its button, closed by Escape.
    sidebar = page.locator("#sidebar")
    menu = page.get_by_role("button", name="Show the chat list")
    expect(sidebar).not_to_be_visible()
    menu.click()
    expect(sidebar).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "true")
    page.keyboard.press("Escape")
    expect(sidebar).not_to_be_visible()
    expect(menu).to_be_focused()

    # The theme toggle flips the page and is remembered.
    theme = page.locator("html").get_attribute("data-theme")
    menu.click()
    page.locator("#sidebar [data-theme-toggle]").click()
    other = "dark" if theme == "light" else "light"
    expect(page.locator("html")).to_have_attribute("data-theme", other)
    page.reload()
    ready(page)
    expect(page.locator("html")).to_have_attribute("data-theme", other)

    # Out-of-range settings are refused before anything is sent.
    page.get_by_role("button", name="Chat settings").click()
    page.locator("#set-temperature").fill("3")
    page.keyboard.press("Escape")
    page.get_by_label("Message", exact=True).fill("Hello")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator("#settings-panel")).to_have_class(re.compile(r"\bopen\b"))
    expect(page).to_have_url(base + "/")

    # A system prompt over the cap is refused on the page, and kept there.
    page.locator("#set-temperature").fill("0.7")
    page.locator("#set-system").fill("x" * 8001)
    page.keyboard.press("Escape")
    page.get_by_label("Message", exact=True).press("Enter")
    expect(page.locator("#errors")).to_contain_text("at most 8,000 characters (this one has 8,001)")
    expect(page.locator("#settings-panel")).to_have_class(re.compile(r"\bopen\b"))
    expect(page.locator("#set-system")).to_have_value("x" * 8001)
    expect(page).to_have_url(base + "/")
    page.locator("#set-system").fill("")

    # Log out (a POST form) and back to the login page, which links to sign-up.
    page.keyboard.press("Escape")
    menu.click()
    page.get_by_role("button", name="Log out").click()
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect(page.get_by_role("link", name="Create an account")).to_be_visible()
    page.get_by_label("Username").fill("phone-user")
    page.get_by_label("Password").fill("wrong password")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator(".errorlist")).to_contain_text("correct username and password")

    problems.check()
    close(context)


def test_a_missing_chat_is_the_sites_own_page_with_a_way_back(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "lost-user")
    problems.expect_error("status of 404")  # chromium logs the page's own status
    answer = page.goto(f"{base}/c/{uuid.uuid4()}/")
    assert answer is not None and answer.status == 404
    expect(page.get_by_role("heading", name="Page not found")).to_be_visible()
    # In the site's look (its stylesheet and theme), under the real Content-Security-Policy.
    expect(page.locator(".auth-card")).to_have_css("border-radius", "20px")
    expect(page.locator("html")).to_have_attribute("data-theme", re.compile("light|dark"))
    page.get_by_role("link", name="Back to your chats").click()
    expect(page).to_have_url(base + "/")
    ready(page)
    problems.check()
    close(context)


def test_a_new_api_key_is_one_line_with_a_copy_button_and_a_reload_makes_no_second(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser, permissions=["clipboard-read", "clipboard-write"])
    sign_up(page, base, "key-user")
    page.goto(base + "/settings/keys/")
    ready(page)
    page.get_by_label("Name").fill("laptop")
    page.get_by_role("button", name="Create a key").click()
    expect(page).to_have_url(base + "/settings/keys/")
    ready(page)
    key = page.locator("#new-key")
    expect(key).to_be_visible()
    # One line: wrapped at its hyphens, the text would lie on several.
    lines = "e => { const r = document.createRange(); r.selectNodeContents(e); return r.getClientRects().length; }"
    assert key.evaluate(lines) == 1
    page.get_by_role("button", name="Copy").click()
    expect(page.get_by_role("button", name="Copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == key.text_content()
    # The page was a redirect's: reloading it neither makes a second key nor shows this one again.
    page.reload()
    ready(page)
    expect(page.locator("#new-key")).to_have_count(0)
    expect(page.locator(".key-list li")).to_have_count(1)
    problems.check()
    close(context)


def listed_titles(page: Page) -> list[str]:
    return page.locator(".conv-list .conv > a").evaluate_all("links => links.map(a => a.title)")


def test_the_list_keeps_the_servers_order_as_chats_are_opened_and_used(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "order-user")
    chats = []
    for text in ("First chat", "Second chat", "Third chat"):
        page.goto(base + "/")
        ready(page)
        chats.append(new_chat(page, text))
    page.goto(chats[0])
    ready(page)
    page.locator("details.menu summary").click()
    page.get_by_role("button", name="Pin to the top").click()
    ready(page)
    server_order = ["First chat", "Third chat", "Second chat"]  # pinned, then newest activity
    assert listed_titles(page) == server_order
    # A pinned chat looks pinned, as the list comes from the page and as the list's API gives it.
    pinned = page.locator(".conv-list .conv.pinned")
    expect(pinned.locator("a svg.icon-pin")).to_have_count(1)
    page.get_by_label("Which chats to list").select_option(label="Archived")
    page.get_by_label("Which chats to list").select_option(label="Chats")
    expect(pinned.locator(".conv-title svg.icon-pin")).to_have_count(1)
    # Opening a chat is no activity: it stays where it is (it went to the top, above the pinned one).
    # After the transcript's sync (which the socket's opening starts) has been handled.
    with page.expect_response(lambda response: "/api/conversations/" in response.url and "limit=" in response.url):
        page.goto(chats[1])
    ready(page)
    page.evaluate("() => new Promise((done) => requestAnimationFrame(() => setTimeout(done)))")
    assert listed_titles(page) == server_order
    # A message is: the chat goes first after the pinned ones, as the server has it after a reload.
    box = page.get_by_label("Message", exact=True)
    box.fill("And more")
    box.press("Enter")
    settle_reply(page)
    expect(page.locator(".conv-list .conv > a").nth(1)).to_have_attribute("title", "Second chat")
    assert listed_titles(page) == ["First chat", "Second chat", "Third chat"]
    page.reload()
    ready(page)
    assert listed_titles(page) == ["First chat", "Second chat", "Third chat"]
    problems.check()
    close(context)


def test_the_sidebar_gives_titles_and_the_user_name_their_room(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "margaret-hamilton")
    new_chat(page, "Explain how the Apollo guidance computer scheduled its jobs")
    page.goto(base + "/")
    ready(page)
    page.mouse.move(900, 400)  # nothing in the list hovered
    row = page.locator(".conv-list .conv").first
    # The title has the row's width: the Rename and Delete buttons, hidden, take none of it.
    room = row.evaluate("li => li.querySelector('a').clientWidth / li.clientWidth")
    assert room > 0.97, room
    name = page.locator(".sidebar-user > span:last-child")
    expect(name).to_have_text("margaret-hamilton")
    assert name.evaluate("span => span.scrollWidth <= span.clientWidth"), "the user name is cut short"
    # The API keys link has its own icon, not the chat settings' sliders.
    expect(page.get_by_role("link", name="API keys").locator("svg.icon-key")).to_have_count(1)
    problems.check()
    close(context)


def test_the_composers_errors_and_settings_follow_what_is_typed(browser, daphne_server):
    base = daphne_server.url
    context, page, problems = new_page(browser)
    sign_up(page, base, "typing-user")
    limit = int(page.locator("[data-max-chars]").get_attribute("data-max-chars"))
    box = page.get_by_label("Message", exact=True)
    box.fill("x" * (limit + 1))
    box.press("Enter")
    errors = page.locator("#errors .alert")
    expect(errors).to_contain_text("at most")
    # Cut short enough again, the error goes with the reason for it.
    box.fill("x" * limit)
    expect(errors).to_have_count(0)
    # A temperature typed out of range moves the slider to its end and shows as invalid.
    page.get_by_role("button", name="Chat settings").click()
    number = page.locator("#set-temperature")
    number.fill("3")
    expect(page.locator('input[type=range][data-for="set-temperature"]')).to_have_value("2")
    expect(number).to_have_attribute("aria-invalid", "true")
    number.fill("0.5")
    expect(page.locator('input[type=range][data-for="set-temperature"]')).to_have_value("0.5")
    expect(number).to_have_attribute("aria-invalid", "false")
    problems.check()
    close(context)


def test_the_composer_stays_put_while_a_reply_streams(browser, daphne_server):
    context, page, problems = new_page(browser, width=1024)
    sign_up(page, daphne_server.url, "steady-user")
    new_chat(page, "Hello")
    box = "() => { const r = document.querySelector('.composer').getBoundingClientRect(); return [r.top, r.height]; }"
    idle = page.evaluate(box)
    set_settings(page, max_new_tokens=600)
    message = page.get_by_label("Message", exact=True)
    message.fill("Tell me a long story")
    message.press("Enter")
    expect(page.locator("#composer-status")).to_contain_text("Writing a reply")
    assert page.evaluate(box) == idle  # the status line did not wrap the hint onto a second line
    page.get_by_role("button", name="Stop generating").click()
    settle_reply(page)
    assert page.evaluate(box) == idle
    problems.check()
    close(context)
