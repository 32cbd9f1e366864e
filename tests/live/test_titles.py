"""Titles the chat's model writes after its first reply (conversations.live.titles, docs/history.md).

On the tiny model, greedy and so the same every run: the tests compare what
the chat gets with the tiny model's own answer to the title prompt.
"""

import pytest
from asgiref.sync import sync_to_async

from conversations.live import titles
from conversations.models import Conversation
from inference import Finished, Request
from tests.live.test_consumer import connect, joined_tokens, receive_until_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

FIRST = "Tell me about lighthouses on rocky coasts"
SHORT = {"temperature": 0, "max_new_tokens": 8}


@pytest.fixture
def titling(settings):
    settings.CHAT_TITLES = True


async def answer_to(engine, messages: list[dict]) -> str:
    """What the tiny model answers, as a title request (greedy) gets it."""
    request = Request(messages=messages, params=titles.PARAMS, background=True)
    return [e.result.text async for e in engine.stream(request) if isinstance(e, Finished)][0]


@pytest.mark.parametrize(
    "raw, title",
    [
        ("Lighthouses of the North", "Lighthouses of the North"),
        ('"Lighthouses of the North."', "Lighthouses of the North"),
        ("Title: **Rocky coasts**\nA second line", "Rocky coasts"),
        ("\n\n  “Keepers   and lamps”  ", "Keepers and lamps"),
        ("word " * 20, "word word word word word word word word word word word word"),
        ("x" * 80, "x" * 60),
        ('""', ""),
        (".", ""),
        ("", ""),
    ],
)
async def test_an_answer_is_cleaned_to_one_short_line(raw, title):
    assert titles.clean(raw) == title
    assert len(titles.clean(raw)) <= titles.MAX_CHARS


async def test_after_the_first_reply_every_tab_gets_the_models_title_after_the_end(
    titling, engine, alice, conversation
):
    chat = await sync_to_async(conversation)(alice, title="")
    ws, _, _ = await connect(chat.id, alice)
    other, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": FIRST, "params": SHORT})
    frames = await receive_until_end(ws)
    assert frames[0]["title"] == FIRST  # the first line names it at once
    expected = titles.clean(
        await answer_to(engine, titles.prompt([{"role": "user", "content": FIRST}], joined_tokens(frames)))
    )
    assert expected and expected != FIRST
    # After the `end`, which it never delays: the model's title, to every tab.
    assert await ws.receive_json_from(timeout=30) == {"type": "title", "title": expected}
    await receive_until_end(other)
    assert await other.receive_json_from(timeout=30) == {"type": "title", "title": expected}
    stored = await Conversation.objects.aget(id=chat.id)
    assert (stored.title, stored.title_source) == (expected, "model")
    # A second reply asks for no other title.
    await ws.send_json_to({"type": "send", "content": "And their keepers?", "params": SHORT})
    second = await receive_until_end(ws)
    assert "title" not in second[0]
    assert await ws.receive_nothing(timeout=1)
    await ws.disconnect()
    await other.disconnect()


async def test_a_title_the_user_set_is_never_replaced(titling, engine, alice, alice_client, conversation):
    chat = await sync_to_async(conversation)(alice, title="")
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": FIRST, "params": SHORT})
    frames = await receive_until_end(ws)
    # The model's title, announced once stored (its task starts after the `end`, which may come first).
    assert (await ws.receive_json_from(timeout=30))["type"] == "title"
    assert (await Conversation.objects.aget(id=chat.id)).title_source == "model"
    # Renamed, and then the model answers again: the rename stays.
    await sync_to_async(alice_client.post)(f"/c/{chat.id}/rename/", {"title": "My lighthouses"})
    history = [{"role": "user", "content": FIRST}]
    assert await titles.write(str(chat.id), history, joined_tokens(frames), engine) is None
    stored = await Conversation.objects.aget(id=chat.id)
    assert (stored.title, stored.title_source) == ("My lighthouses", "user")
    await ws.disconnect()


async def test_no_title_is_asked_when_titles_are_off(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice, title="")
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": FIRST, "params": SHORT})
    await receive_until_end(ws)
    assert await ws.receive_nothing(timeout=1)
    assert (await Conversation.objects.aget(id=chat.id)).title_source == "first_line"
    await ws.disconnect()
