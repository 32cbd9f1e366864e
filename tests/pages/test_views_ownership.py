"""User B can neither see nor touch user A's conversations: always 404."""

import pytest

from conversations.models import Conversation

pytestmark = pytest.mark.django_db

GET_PATHS = ["/c/{id}/", "/c/{id}/export.json", "/c/{id}/export.md", "/api/conversations/{id}/"]
# The delete view is async: its database_sync_to_async closes the thread's connection
# afterwards, which inside a test's transaction would close PostgreSQL's for good.
POST_PATHS = ["/c/{id}/rename/", pytest.param("/c/{id}/delete/", marks=pytest.mark.django_db(transaction=True))]


@pytest.mark.parametrize("path", GET_PATHS)
def test_it_hides_other_users_conversations(bob_client, alice, conversation, path):
    convo = conversation(alice, title="Alice only", messages=[("user", "secret")])
    response = bob_client.get(path.format(id=convo.id))
    assert response.status_code == 404
    assert b"secret" not in response.content


@pytest.mark.parametrize("path", POST_PATHS)
def test_it_refuses_changes_to_other_users_conversations(bob_client, alice, conversation, path):
    convo = conversation(alice, title="Alice only")
    response = bob_client.post(path.format(id=convo.id), {"title": "pwned"})
    assert response.status_code == 404
    convo.refresh_from_db()
    assert convo.title == "Alice only"


def test_the_list_endpoint_shows_only_own(bob_client, alice, bob, conversation):
    conversation(alice, title="Alice only")
    mine = conversation(bob, title="Bob's")
    ids = [c["id"] for c in bob_client.get("/api/conversations/").json()["conversations"]]
    assert ids == [str(mine.id)]


def test_an_unknown_id_is_404(alice_client):
    assert alice_client.get("/c/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_for_user_returns_nothing_for_anonymous(alice, conversation):
    from django.contrib.auth.models import AnonymousUser

    conversation(alice)
    assert not Conversation.objects.for_user(AnonymousUser()).exists()
