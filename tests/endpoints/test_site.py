"""A site of endpoints only (CHAT_INFERENCE=none), end to end: a real daphne whose models are a real
llama.cpp server's and another Chatsite's (the session's tiny-model daphne, through its own /v1).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys

import openai
import pytest
import requests

from tests.api.test_api_live import api_key, client
from tests.clients import frames_until_end, joined_tokens, new_conversation, open_socket, sign_up, stored
from tests.live_server import REPO, start_daphne

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def other_chatsite(daphne_server):
    """The session's tiny-model Chatsite as an endpoint: its /v1 and a key of one of its users."""
    sign_up(daphne_server.url, "endpoint-client")
    model = requests.get(f"{daphne_server.url}/healthz").json()["model"]
    return f"{daphne_server.url}/v1", api_key(daphne_server, "endpoint-client"), model


@pytest.fixture(scope="module")
def site(llama_server, other_chatsite):
    url, key, _ = other_chatsite
    settings = {
        "CHAT_INFERENCE": "none",
        "CHAT_ENDPOINTS": f"llama={llama_server.url},other={url}",
        "CHAT_ENDPOINT_OTHER_KEY": key,
    }
    with start_daphne(settings) as server:
        # The discovery thread asks both endpoints as the site starts.
        server.wait_for_log("endpoint other is up")
        server.wait_for_log("endpoint llama is up")
        yield server


def test_a_site_of_endpoints_starts_without_torch_and_lists_their_models(site, other_chatsite):
    health = requests.get(f"{site.url}/healthz").json()
    assert health["status"] == "ok" and health["mode"] == "none"
    assert health["endpoints"]["llama"] == {"status": "ok", "models": ["smollm2"]}
    assert health["endpoints"]["other"] == {"status": "ok", "models": [other_chatsite[2]]}
    with open(f"/proc/{site.process.pid}/maps") as maps:
        assert "libtorch" not in maps.read()  # torch was never imported
    session = sign_up(site.url, "none-admin")
    listed = session.get(f"{site.url}/api/models/").json()
    assert {(m["id"], m["endpoint"], m["available"]) for m in listed["models"]} == {
        ("smollm2", "llama", True),
        (other_chatsite[2], "other", True),
    }
    assert listed["default"] in {"smollm2", other_chatsite[2]}


@pytest.mark.parametrize("endpoint", ["llama", "other"])
def test_chats_on_either_endpoint_stream_over_the_socket_and_are_stored(site, other_chatsite, endpoint):
    session = sign_up(site.url, f"none-chatter-{endpoint}")
    model = "smollm2" if endpoint == "llama" else other_chatsite[2]
    conversation_id = new_conversation(session, site.url)

    async def turn(frame: dict):
        async with open_socket(site.ws_url, conversation_id, session, site.url) as tab:
            await tab.send(json.dumps(frame))
            return await frames_until_end(tab, timeout=120)

    params = {"temperature": 0, "max_new_tokens": 12, "model": model}
    frames = asyncio.run(turn({"type": "send", "content": "Tell me a long story about a dragon", "params": params}))
    assert frames[1]["type"] == "start" and frames[1]["model"] == model
    assert frames[-1]["status"] == "complete" and frames[-1]["finish_reason"] == "length"
    reply = stored(session, site.url, conversation_id)["messages"][-1]
    assert reply["content"] == joined_tokens(frames) != "" and reply["model_name"] == model
    # Continue: the endpoint is sent the reply so far, last, and the new text extends it in place.
    more = asyncio.run(turn({"type": "continue", "params": {"temperature": 0, "max_new_tokens": 8}}))
    assert more[0]["type"] == "start" and more[0]["content"] == reply["content"]
    grown = stored(session, site.url, conversation_id)["messages"][-1]
    assert grown["id"] == reply["id"] and grown["content"] == reply["content"] + joined_tokens(more)
    assert grown["completion_tokens"] > reply["completion_tokens"] and joined_tokens(more)


def test_the_api_serves_the_endpoints_models_with_the_openai_client(site, other_chatsite):
    sign_up(site.url, "none-api-user")
    api = client(site, api_key(site, "none-api-user"))
    assert sorted(model.id for model in api.models.list().data) == sorted(["smollm2", other_chatsite[2]])
    chunks = list(
        api.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=12,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text and chunks[-1].usage.completion_tokens > 0
    with pytest.raises(openai.NotFoundError) as missing:
        api.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "Hi"}])
    assert missing.value.body["code"] == "model_not_found"


def test_batch_prompts_runs_on_an_endpoint_model(site, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello\nName a colour.\n")
    result = subprocess.run(
        [sys.executable, "manage.py", "batch_prompts", str(prompts), "--model", "smollm2", "--max-new-tokens", "8"],
        cwd=REPO,
        env=site.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["line"] for row in rows] == [1, 2] and all(row["reply"] for row in rows), rows
    assert all(row["finish_reason"] == "length" for row in rows)


@pytest.mark.browser
def test_the_model_picker_in_a_real_browser(browser, site, other_chatsite):
    from playwright.sync_api import expect

    from tests.browser_support import LAST_REPLY, close, new_page, ready, set_settings, settle_reply
    from tests.browser_support import sign_up as browser_sign_up

    # A model the site knows but no endpoint serves now (its endpoint gone): listed as unavailable.
    with sqlite3.connect(site.workdir / "db.sqlite3") as db:
        db.execute(
            "INSERT INTO conversations_modeloption (model_id, display_name, offered, is_default, first_seen_at)"
            " VALUES ('ghost', '', 1, 0, datetime('now'))"
        )
    context, page, problems = new_page(browser)
    browser_sign_up(page, site.url, "picker")
    page.get_by_role("button", name="Chat settings").click()
    picker = page.get_by_label("Model")
    expect(picker.locator("option")).to_have_count(3)
    expect(picker.locator("option[value=ghost]")).to_have_text("ghost (unavailable)")
    picker.select_option("smollm2")
    page.keyboard.press("Escape")
    set_settings(page, temperature=0, max_new_tokens=8)
    box = page.get_by_label("Message", exact=True)
    box.fill("Hello there")
    box.press("Enter")
    settle_reply(page)
    expect(page.locator(LAST_REPLY).locator(".msg-model")).to_have_text("smollm2")
    # Between turns: the other Chatsite's model, from the next message on.
    page.get_by_role("button", name="Chat settings").click()
    picker.select_option(other_chatsite[2])
    page.keyboard.press("Escape")
    box.fill("And you?")
    box.press("Enter")
    settle_reply(page)
    expect(page.locator(LAST_REPLY).locator(".msg-model")).to_have_text(other_chatsite[2])
    expect(page.locator(".topbar-sub")).to_have_text(other_chatsite[2])
    # After a reload each reply still names its model, and the picker shows the chat's.
    page.reload()
    ready(page)
    models = page.locator("#transcript li.msg-assistant .msg-model")
    expect(models).to_have_text(["smollm2", other_chatsite[2]])
    expect(page.locator("#set-model")).to_have_value(other_chatsite[2])
    problems.check()
    close(context)
    with sqlite3.connect(site.workdir / "db.sqlite3") as db:
        db.execute("DELETE FROM conversations_modeloption WHERE model_id = 'ghost'")
