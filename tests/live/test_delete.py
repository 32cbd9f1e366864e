"""Deleting a chat while its reply streams (issue 29, item 3): the reply stops through its runner, every
tab gets its `end`, its quota is settled with what it spent, and then the chat is gone."""

import pytest
from asgiref.sync import sync_to_async
from django.test import AsyncClient

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
    assert not await Conversation.objects.filter(id=chat.id).aexists()
    assert not await Message.objects.filter(id=message_id).aexists()
    usage = await DailyUsage.objects.aget(user=alice, day=quotas.today())
    spent = end["usage"]["prompt_tokens"] + end["usage"]["completion_tokens"]
    assert (usage.tokens, usage.reserved, usage.replies) == (spent, 0, 1)
    assert not await Reservation.objects.aexists()
    await ws.disconnect()


async def test_deleting_an_idle_chat_deletes_it(engine, alice, bob, conversation):
    chat = await sync_to_async(conversation)(alice, messages=[("user", "Hi"), ("assistant", "Hello")])
    assert (await (await logged_in(bob)).post(f"/c/{chat.id}/delete/")).status_code == 404
    assert (await (await logged_in(alice)).post(f"/c/{chat.id}/delete/")).status_code == 302
    assert not await Conversation.objects.filter(id=chat.id).aexists()
