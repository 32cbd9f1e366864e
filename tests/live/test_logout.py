"""A logout closes the chat sockets of that session (issue 29, item 5): before, an open socket kept
sending and editing after its user logged out."""

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.routing import websocket_application
from tests.live.test_consumer import ORIGIN

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


async def socket_of(client: Client, conversation_id) -> WebsocketCommunicator:
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()
    communicator = WebsocketCommunicator(
        websocket_application, f"/ws/chat/{conversation_id}/", headers=[ORIGIN, (b"cookie", cookie)]
    )
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    return communicator


async def test_a_logout_closes_that_sessions_sockets_only(engine, alice, bob, conversation):
    chat = await sync_to_async(conversation)(alice)
    bobs_chat = await sync_to_async(conversation)(bob)
    browser, other_browser, bobs = Client(), Client(), Client()
    for client, user in ((browser, alice), (other_browser, alice), (bobs, bob)):
        await sync_to_async(client.force_login)(user)
    first_tab, second_tab = await socket_of(browser, chat.id), await socket_of(browser, chat.id)
    elsewhere, bobs_tab = await socket_of(other_browser, chat.id), await socket_of(bobs, bobs_chat.id)

    assert (await sync_to_async(browser.post)("/accounts/logout/")).status_code == 302

    for tab in (first_tab, second_tab):
        assert await tab.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}
    # The same user's other browser, and another user, keep their sockets: each still answers a frame.
    for tab in (elsewhere, bobs_tab):
        await tab.send_json_to({"type": "stop"})
        assert (await tab.receive_json_from(timeout=5))["message"] == "No reply is being generated."
        await tab.disconnect()
