"""Feedback on replies: POST /api/messages/<id>/feedback/, the message JSON, other tabs."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.db import connections
from django.test import Client

from conversations.models import Feedback
from tests.live.test_consumer import connect


@pytest.fixture
def chat(alice, conversation):
    convo = conversation(alice, messages=[("user", "What is 2 + 2?"), ("assistant", "4.")])
    return convo


def rate(client, message_id, body, **extra):
    return client.post(
        f"/api/messages/{message_id}/feedback/", json.dumps(body), content_type="application/json", **extra
    )


def reply_of(chat):
    return chat.messages.get(role="assistant")


@pytest.mark.django_db
def test_a_user_rates_their_own_reply_and_the_message_json_shows_it(alice_client, chat):
    reply = reply_of(chat)
    response = rate(alice_client, reply.id, {"rating": -1, "comment": " Wrong sum "})
    assert response.status_code == 200 and response.json() == {"rating": -1, "comment": "Wrong sum"}
    data = alice_client.get(f"/api/conversations/{chat.id}/").json()
    assert data["messages"][1]["feedback"] == {"rating": -1, "comment": "Wrong sum"}
    assert data["messages"][0]["feedback"] is None  # user messages have none
    html = alice_client.get(f"/c/{chat.id}/").content.decode()
    assert 'data-rating="-1" data-comment="Wrong sum"' in html  # the page starts with the state


@pytest.mark.django_db
def test_zero_clears_it(alice_client, chat):
    reply = reply_of(chat)
    rate(alice_client, reply.id, {"rating": 1})
    response = rate(alice_client, reply.id, {"rating": 0})
    assert response.status_code == 200 and response.json() == {"rating": 0, "comment": ""}
    assert not Feedback.objects.exists()
    assert alice_client.get(f"/api/conversations/{chat.id}/").json()["messages"][1]["feedback"] is None


@pytest.mark.django_db
def test_a_changed_rating_goes_back_to_the_queue(alice_client, chat, staff):
    reply = reply_of(chat)
    rate(alice_client, reply.id, {"rating": -1})
    Feedback.objects.update(reviewed=True, reviewed_by=staff, staff_note="seen")
    rate(alice_client, reply.id, {"rating": 1, "comment": "actually fine"})
    feedback = Feedback.objects.get()
    assert (feedback.rating, feedback.reviewed, feedback.reviewed_by) == (1, False, None)
    assert feedback.staff_note == "seen"  # staff's words are kept


@pytest.mark.django_db
def test_someone_elses_reply_or_a_user_message_is_404(bob_client, alice_client, chat):
    reply = reply_of(chat)
    assert rate(bob_client, reply.id, {"rating": 1}).status_code == 404
    user_message = chat.messages.get(role="user")
    assert rate(alice_client, user_message.id, {"rating": 1}).status_code == 404
    assert rate(alice_client, 999_999, {"rating": 1}).status_code == 404
    assert not Feedback.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    "body, says",
    [
        ({"rating": 2}, "rating must be 1, -1 or 0"),
        ({"rating": "1"}, "rating must be 1, -1 or 0"),
        ({"rating": True}, "rating must be 1, -1 or 0"),
        ({}, "rating must be 1, -1 or 0"),
        ({"rating": 1, "comment": 5}, "comment must be a string"),
        ({"rating": 1, "comment": "x" * 2001}, "at most 2000 characters"),
        ([1], "must be a JSON object"),
        # Issue 29, item 4: a lone surrogate broke the insert (HTTP 500).
        ({"rating": 1, "comment": "bad \ud800 text"}, "lone surrogates"),
        ({"rating": -1, "comment": "nul \x00"}, "NUL"),
    ],
)
def test_bad_input_is_400_saying_why(alice_client, chat, body, says):
    response = rate(alice_client, reply_of(chat).id, body)
    assert response.status_code == 400 and says in response.json()["error"]
    assert not Feedback.objects.exists()


@pytest.mark.django_db
def test_broken_json_is_400(alice_client, chat):
    response = alice_client.post(
        f"/api/messages/{reply_of(chat).id}/feedback/", "{nope", content_type="application/json"
    )
    assert response.status_code == 400


@pytest.mark.django_db
def test_it_needs_the_csrf_token(alice, chat):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert rate(client, reply_of(chat).id, {"rating": 1}).status_code == 403
    client.get(f"/c/{chat.id}/")  # sets the cookie
    token = client.cookies["csrftoken"].value
    assert rate(client, reply_of(chat).id, {"rating": 1}, HTTP_X_CSRFTOKEN=token).status_code == 200


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_another_tab_sees_the_change(alice, chat):
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    reply = await sync_to_async(reply_of)(chat)
    client = await sync_to_async(Client)()
    await sync_to_async(client.force_login)(alice)
    response = await sync_to_async(rate)(client, reply.id, {"rating": 1, "comment": "nice"})
    assert response.status_code == 200
    frame = await ws.receive_json_from(timeout=10)
    assert frame == {"type": "feedback", "message_id": reply.id, "feedback": {"rating": 1, "comment": "nice"}}
    await sync_to_async(rate)(client, reply.id, {"rating": 0})
    frame = await ws.receive_json_from(timeout=10)
    assert frame == {"type": "feedback", "message_id": reply.id, "feedback": None}
    await ws.disconnect()
    await sync_to_async(connections.close_all)()  # force_login's connection, so the test database can go
