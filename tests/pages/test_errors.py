"""Error answers: the site's own page with a way back, or JSON where JSON is asked for (chatsite/errors.py)."""

import uuid

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def assert_site_page(response, status: int, title: str) -> str:
    page = response.content.decode()
    assert response.status_code == status and response["Content-Type"].startswith("text/html")
    assert f"<h1>{title}</h1>" in page and 'href="/">Back to your chats</a>' in page
    assert 'href="/static/chat/chat.css' in page or "/static/chat/chat." in page  # the site's look
    return page


def test_a_missing_page_or_chat_is_the_sites_page_with_a_way_back(alice_client):
    assert_site_page(Client().get("/no-such-page/"), 404, "Page not found")
    assert_site_page(alice_client.get(f"/c/{uuid.uuid4()}/"), 404, "Page not found")


def test_json_endpoints_answer_a_missing_thing_in_json(alice_client):
    missing = alice_client.get(f"/api/conversations/{uuid.uuid4()}/")
    assert missing.status_code == 404 and missing.json() == {
        "error": "There is nothing at this address. The chat may have been deleted, or the link mistyped."
    }
    # Asked for JSON, any URL answers in JSON.
    export = alice_client.get(f"/c/{uuid.uuid4()}/export.json", HTTP_ACCEPT="application/json")
    assert export.status_code == 404 and "error" in export.json()
    # Under /v1/, OpenAI's shape.
    assert Client().get("/v1/nothing").json()["error"]["code"] == "unknown_url"


def test_a_form_refused_by_the_csrf_check_says_why_in_the_sites_page(alice):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    page = assert_site_page(browser.post("/c/new/", {"system_prompt": ""}), 403, "Not allowed")
    assert "reload the page and try again" in page


@pytest.mark.urls("tests.pages.error_urls")
def test_a_crash_is_the_sites_page_or_json_and_shows_no_traceback():
    client = Client(raise_request_exception=False)
    page = assert_site_page(client.get("/boom/"), 500, "Something went wrong")
    assert "RuntimeError" not in page and "Traceback" not in page
    crashed = client.get("/api/boom/")
    assert crashed.status_code == 500 and crashed.json() == {
        "error": "The server failed to answer. Try again in a moment; your chats are safe."
    }
