"""Share links (conversations/shares/, docs/history.md): a snapshot of the active path that others read, that
shows nothing added later, nothing of another branch and nothing else of its owner, until it is revoked."""

import pytest
from django.test import Client

from conversations.history.tree import Tree
from conversations.models import Conversation, Message, Share

pytestmark = pytest.mark.django_db


def share(client, chat) -> str:
    response = client.post(f"/c/{chat.id}/share/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200, response.content
    return response.json()["url"]


@pytest.fixture
def chat(alice, conversation):
    return conversation(
        alice,
        title="Lighthouses",
        messages=[("user", "Tell me about **lighthouses**"), ("assistant", "They guide ships.")],
    )


def test_a_share_shows_the_path_as_it_was_and_nothing_else(alice, alice_client, bob_client, chat, conversation):
    conversation(alice, title="Alice's secret plans", messages=[("user", "my secret")])
    # A branch: an edit of the first message, then back to the original path.
    original_leaf = chat.active_leaf
    first = Tree.of(chat).path()[0]
    Message.objects.create(conversation=chat, role="user", content="An edited question", parent=first.parent)
    chat.activate(original_leaf)
    url = share(alice_client, chat)
    assert url.startswith("/s/") and alice_client.get(f"/api/conversations/{chat.id}/").json()["shared"] is True
    chat.append("user", "A question after the share")  # later turns stay out of it

    snapshot = bob_client.get(url, HTTP_ACCEPT="application/json").json()
    assert snapshot["title"] == "Lighthouses"
    assert [(m["role"], m["content"]) for m in snapshot["messages"]] == [
        ("user", "Tell me about **lighthouses**"),
        ("assistant", "They guide ships."),
    ]
    page = bob_client.get(url).content.decode()
    assert "They guide ships." in page and "Continue this chat" in page
    for hidden in ("A question after the share", "An edited question", "secret", "alice"):
        assert hidden not in page, hidden


def test_only_the_owner_shares_and_revoking_makes_every_link_404(alice_client, bob_client, chat):
    assert bob_client.post(f"/c/{chat.id}/share/").status_code == 404
    first, second = share(alice_client, chat), share(alice_client, chat)
    assert bob_client.post(f"/c/{chat.id}/unshare/").status_code == 404
    assert bob_client.get(first).status_code == 200
    alice_client.post(f"/c/{chat.id}/unshare/")
    assert bob_client.get(first).status_code == 404 and bob_client.get(second).status_code == 404
    assert alice_client.get(f"/api/conversations/{chat.id}/").json()["shared"] is False


def test_a_share_needs_a_login_unless_shares_are_public(alice_client, chat, settings):
    url = share(alice_client, chat)
    assert Client().get(url)["Location"].startswith("/accounts/login/")
    settings.CHATSITE_SHARE_PUBLIC = True
    page = Client().get(url).content.decode()
    assert "They guide ships." in page and "Continue this chat" not in page


def test_continue_copies_the_snapshot_into_a_chat_of_the_readers(alice_client, bob_client, bob, chat):
    url = share(alice_client, chat)
    response = bob_client.post(url + "continue/")
    copy = Conversation.objects.get(user=bob)
    assert response["Location"] == f"/c/{copy.id}/" and copy.title == "Lighthouses"
    assert [(m.role, m.content) for m in Tree.of(copy).path()] == [
        ("user", "Tell me about **lighthouses**"),
        ("assistant", "They guide ships."),
    ]
    assert Conversation.objects.filter(user__username="alice").count() == 1  # the owner's chat is untouched


def test_the_settings_page_lists_ones_shares_and_revokes_each(alice_client, bob_client, chat):
    url = share(alice_client, chat)
    link = Share.objects.get()
    page = alice_client.get("/settings/shares/").content.decode()
    assert "Lighthouses" in page and url in page
    assert "Lighthouses" not in bob_client.get("/settings/shares/").content.decode()
    assert bob_client.post(f"/settings/shares/{link.id}/revoke/").status_code == 404
    alice_client.post(f"/settings/shares/{link.id}/revoke/")
    assert alice_client.get(url).status_code == 404


def test_a_temporary_or_empty_chat_is_not_shared(alice, alice_client, conversation):
    for chat in (conversation(alice, temporary=True, messages=[("user", "hi")]), conversation(alice)):
        response = alice_client.post(f"/c/{chat.id}/share/", HTTP_ACCEPT="application/json")
        assert response.status_code == 400 and "share" in response.json()["error"]
    assert not Share.objects.exists()


def test_staff_see_shared_chats_marked_in_the_admin(staff, alice_client, chat):
    share(alice_client, chat)
    admin = Client()
    admin.force_login(staff)
    page = admin.get("/admin/conversations/conversation/?shared=1").content.decode()
    assert "Lighthouses" in page
