"""Long transcripts load in pages, newest first (issue 29, item 12): a 50k-message chat page took 24 s
and weighed 43 MB, every message rendered at once."""

import re

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.history import tree
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def long_chat(alice):
    chat = Conversation.objects.create(user=alice, title="Long")
    messages = [
        Message(conversation=chat, role="user" if i % 2 == 0 else "assistant", content=f"message {i}")
        for i in range(250)
    ]
    Message.objects.bulk_create(messages)
    tree.chain(chat)
    return chat


def shown_ids(html: str) -> list[int]:
    """The ids of the message bubbles a page rendered, in order."""
    return [int(re.search(r'data-id="(\d+)"', item).group(1)) for item in html.split('<li class="msg msg-')[1:]]


def test_the_chat_page_shows_the_newest_page_and_offers_earlier_ones(alice_client, long_chat):
    html = alice_client.get(long_chat.get_absolute_url()).content.decode()
    path = list(long_chat.messages.order_by("id").values_list("id", flat=True))
    assert shown_ids(html) == path[-tree.PAGE_SIZE :]
    assert "data-earlier" in html and "message 249" in html and "message 149<" not in html


def test_earlier_pages_come_from_the_api_until_the_first_message(alice_client, long_chat):
    path = list(long_chat.messages.order_by("id").values_list("id", flat=True))
    url = f"/api/conversations/{long_chat.id}/"
    newest = alice_client.get(url, {"limit": 100}).json()
    assert [m["id"] for m in newest["messages"]] == path[-100:] and newest["earlier"]
    seen, before = newest["messages"], newest["messages"][0]["id"]
    while True:
        page = alice_client.get(url, {"limit": 100, "before": before}).json()
        seen = page["messages"] + seen
        if not page["earlier"]:
            break
        before = page["messages"][0]["id"]
    assert [m["id"] for m in seen] == path
    assert seen[1]["parent"] == path[0] and seen[1]["siblings"] == [path[1]]
    assert alice_client.get(url).json()["messages"] == seen  # without limit: the whole path, as before


def test_a_page_costs_the_same_queries_however_long_the_chat(alice_client, alice, long_chat):
    short = Conversation.objects.create(user=alice, title="Short")
    short.append("user", "Hi")
    alice_client.get(short.get_absolute_url())  # what a process reads once (the models offered)
    counts = []
    for chat in (short, long_chat):
        with CaptureQueriesContext(connection) as queries:
            assert alice_client.get(chat.get_absolute_url()).status_code == 200
        counts.append(len(queries))
    assert counts[0] == counts[1]


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "501"}, {"limit": "x"}, {"before": "²"}])
def test_bad_page_parameters_are_a_400(alice_client, long_chat, params):
    response = alice_client.get(f"/api/conversations/{long_chat.id}/", params)
    assert response.status_code == 400 and "limit" in response.json()["error"]


def test_a_page_of_branches_knows_each_messages_siblings(alice, conversation):
    chat = conversation(alice, messages=[("user", "Hi"), ("assistant", "Hello")])
    first_reply = chat.messages.get(role="assistant")
    variant = Message.objects.create(conversation=chat, role="assistant", content="Hey", parent=first_reply.parent)
    chat.activate(variant)
    messages, earlier = tree.path_page(chat)
    assert [m.content for m in messages] == ["Hi", "Hey"] and not earlier
    assert messages[1].siblings == [first_reply.id, variant.id]
    assert tree.path_page(chat, before=999_999) == ([], False)
