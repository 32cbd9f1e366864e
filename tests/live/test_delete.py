"""Deleting a chat: while its reply streams (issue 29, item 3) the reply stops through its runner, every
tab gets its `end`, its quota is settled with what it spent, and then the chat is gone. Gone from sight at
once, kept for Undo for CHAT_DELETE_UNDO_S, then removed by the sweep (conversations.live.sweep)."""

from datetime import timedelta

import pytest
from asgiref.sync import sync_to_async
from django.conf import settings
from django.test import AsyncClient
from django.utils import timezone

from conversations.live import sweep
from conversations.live.consumers import CLOSE_NOT_FOUND
from conversations.models import Conversation, DailyUsage, Message, Reservation
from conversations.review import quotas
from tests.live.test_consumer import connect, receive_until_end, send_long

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def logged_in(user) -> AsyncClient:
    client = AsyncClient()
    await sync_to_async(client.force_login)(user)
    return client


async def test_deleting_a_chat_mid_reply_stops_it_ends_it_and_charges_it(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice, title="")
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    started = await send_long(ws, "Tell me a long story")
    message_id = next(f["message_id"] for f in started if f["type"] == "start")
    response = await (await logged_in(alice)).post(f"/c/{chat.id}/delete/")
    assert response.status_code == 302
    frames = started + await receive_until_end(ws)
    end = frames[-1]
    assert end["message_id"] == message_id and end["finish_reason"] == "cancelled"
    assert 0 < end["usage"]["completion_tokens"] < 900  # stopped, not run on to max_new_tokens
    assert (await Conversation.objects.aget(id=chat.id)).deleted_at is not None
    assert await sweep_past_the_undo_window() == 1
    assert not await Conversation.objects.filter(id=chat.id).aexists()
    assert not await Message.objects.filter(id=message_id).aexists()
    usage = await DailyUsage.objects.aget(user=alice, day=quotas.today())
    spent = end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]
    assert (usage.tokens, usage.reserved, usage.replies) == (spent, 0, 1)
    assert not await Reservation.objects.aexists()
    await ws.disconnect()


async def sweep_past_the_undo_window() -> int:
    later = timezone.now() + timedelta(seconds=settings.CHAT_DELETE_UNDO + 1)
    return await sync_to_async(sweep.sweep)(now=later)


async def test_a_deleted_chat_leaves_every_view_at_once_and_undo_brings_it_back(engine, alice, bob, conversation):
    messages = [("user", "Hi"), ("assistant", "Yo")]
    chat = await sync_to_async(conversation)(alice, title="Walrus facts", messages=messages)
    alice_client, bob_client = await logged_in(alice), await logged_in(bob)
    assert (await bob_client.post(f"/c/{chat.id}/delete/")).status_code == 404
    response = await alice_client.post(f"/c/{chat.id}/delete/")
    assert response.status_code == 302 and response.url == "/"
    page = await alice_client.get("/")
    assert "Deleted “Walrus facts”." in page.content.decode() and f"/c/{chat.id}/restore/" in page.content.decode()
    # Out of sight: its page, its JSON, the list, search and its socket.
    for url in (f"/c/{chat.id}/", f"/api/conversations/{chat.id}/", f"/c/{chat.id}/export.json"):
        assert (await alice_client.get(url)).status_code == 404, url
    for query in ("", "?q=walrus"):
        listed = (await alice_client.get(f"/api/conversations/{query}")).json()["conversations"]
        assert [c["id"] for c in listed] == [], query
    _, connected, code = await connect(chat.id, alice)
    assert not connected and code == CLOSE_NOT_FOUND
    # Undo: the owner's alone, and the chat is back as it was.
    assert (await bob_client.post(f"/c/{chat.id}/restore/")).status_code == 404
    response = await alice_client.post(f"/c/{chat.id}/restore/")
    assert response.status_code == 302 and response.url == f"/c/{chat.id}/"
    assert (await alice_client.get(f"/c/{chat.id}/")).status_code == 200
    assert await Message.objects.filter(conversation_id=chat.id).acount() == 2
    # Undone, it is no longer due: the sweep leaves it.
    assert await sweep_past_the_undo_window() == 0


async def test_a_deleted_chat_goes_for_good_once_its_undo_window_has_passed(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice, messages=[("user", "Hi"), ("assistant", "Hello")])
    kept = await sync_to_async(conversation)(alice, messages=[("user", "Keep me")])
    client = await logged_in(alice)
    assert (await client.post(f"/c/{chat.id}/delete/", {"next": f"/c/{kept.id}/"})).url == f"/c/{kept.id}/"
    # Within the window the sweep keeps it; after it, it is gone, and so is Undo.
    assert await sync_to_async(sweep.sweep)() == 0
    assert await sweep_past_the_undo_window() == 1
    assert not await Conversation.objects.filter(id=chat.id).aexists()
    assert not await Message.objects.filter(conversation_id=chat.id).aexists()
    assert (await client.post(f"/c/{chat.id}/restore/")).status_code == 404
    assert await Conversation.objects.filter(id=kept.id).aexists()


async def test_a_delete_goes_back_only_to_a_page_of_this_site(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice)
    response = await (await logged_in(alice)).post(f"/c/{chat.id}/delete/", {"next": "https://evil.example/"})
    assert response.url == "/"


async def test_a_turn_sent_in_a_tab_of_a_chat_deleted_in_another_is_refused(engine, alice, conversation):
    chat = await sync_to_async(conversation)(alice)
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    assert (await (await logged_in(alice)).post(f"/c/{chat.id}/delete/")).status_code == 302
    await ws.send_json_to({"type": "send", "content": "Still there?"})
    error = await ws.receive_json_from(timeout=10)
    assert error["type"] == "error" and error["message"] == "This conversation no longer exists.", error
    assert (await ws.receive_output(timeout=5))["code"] == CLOSE_NOT_FOUND
    assert not await Message.objects.filter(conversation_id=chat.id).aexists()
