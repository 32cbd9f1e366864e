"""The message tree in the detail API, the page, exports and the admin; the 0005_branches migration."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from conversations.history.tree import Tree
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db


@pytest.fixture
def branched(alice, conversation):
    """Hello → (reply A, reply B) ; B → "More" → reply C. Active: A's branch."""
    convo = conversation(alice, title="Branched", messages=[("user", "Hello"), ("assistant", "Reply A")])
    hello, reply_a = convo.messages.all()
    reply_b = Message.objects.create(conversation=convo, role="assistant", content="Reply B", parent=hello)
    convo.activate(reply_b)
    convo.append("user", "More")
    reply_c = convo.append("assistant", "Reply C")
    convo.activate(reply_a)
    return convo, {"hello": hello, "a": reply_a, "b": reply_b, "c": reply_c}


def test_the_detail_api_gives_the_active_path_with_parents_and_siblings(alice_client, branched):
    convo, m = branched
    data = alice_client.get(f"/api/conversations/{convo.id}/").json()
    assert [(x["id"], x["parent"], x["siblings"]) for x in data["messages"]] == [
        (m["hello"].id, None, [m["hello"].id]),
        (m["a"].id, m["hello"].id, [m["a"].id, m["b"].id]),
    ]


def test_the_tree_finds_the_newest_leaf_of_a_branch(branched):
    convo, m = branched
    tree = Tree.of(convo)
    assert tree.newest_leaf_under(m["b"]) == m["c"]
    assert tree.newest_leaf_under(m["a"]) == m["a"]
    assert tree.newest_leaf_under(m["hello"]) == m["c"]


def test_the_page_shows_the_active_path_only(alice_client, branched):
    convo, m = branched
    html = alice_client.get(f"/c/{convo.id}/").content.decode()
    assert "Reply A" in html and "Reply B" not in html and "Reply C" not in html
    assert f'data-siblings="{m["a"].id},{m["b"].id}"' in html


def test_exports_show_the_active_path(alice_client, branched):
    convo, _ = branched
    convo.activate(Message.objects.get(content="Reply C"))
    data = alice_client.get(f"/c/{convo.id}/export.json").json()
    assert [x["content"] for x in data["messages"]] == ["Hello", "Reply B", "More", "Reply C"]
    text = alice_client.get(f"/c/{convo.id}/export.md").content.decode()
    assert "Reply B" in text and "Reply A" not in text


def test_the_admin_shows_the_active_path_and_every_branch(client, staff, branched):
    convo, m = branched
    client.force_login(staff)
    html = client.get(f"/admin/conversations/conversation/{convo.id}/change/").content.decode()
    assert f"1 / 2: #{m['a'].id}, #{m['b'].id}" in html
    assert "Reply B" in html and "Reply C" in html  # the other branch, in the messages below


def test_another_users_conversation_detail_is_404(bob_client, branched):
    convo, _ = branched
    assert bob_client.get(f"/api/conversations/{convo.id}/").status_code == 404


def test_messages_stored_in_bulk_are_chained(alice, conversation):
    from conversations.history import tree

    convo = conversation(alice)
    Message.objects.bulk_create(Message(conversation=convo, role=r, content=r) for r in ("user", "assistant", "user"))
    tree.chain(convo)
    path = Tree.of(Conversation.objects.get(id=convo.id)).path()
    assert [m.content for m in path] == ["user", "assistant", "user"]
    assert [m.parent_id for m in path] == [None, path[0].id, path[1].id]


@pytest.mark.django_db(transaction=True)
def test_the_migration_turns_each_conversation_into_one_path(django_user_model):
    before, after = [("conversations", "0004_apikey")], [("conversations", "0005_branches")]
    executor = MigrationExecutor(connection)
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="carol")
    OldConversation, OldMessage = (
        old.get_model("conversations", "Conversation"),
        old.get_model("conversations", "Message"),
    )
    chat = OldConversation.objects.create(user_id=user.id, title="old")
    empty = OldConversation.objects.create(user_id=user.id, title="empty")
    for role, text in [("user", "one"), ("assistant", "two"), ("user", "three"), ("assistant", "")]:
        OldMessage.objects.create(conversation=chat, role=role, content=text)
    try:
        executor = MigrationExecutor(connection)
        executor.migrate(after)
        new = executor.loader.project_state(after).apps
        NewConversation = new.get_model("conversations", "Conversation")
        NewMessage = new.get_model("conversations", "Message")
        rows = list(
            NewMessage.objects.filter(conversation_id=chat.id).order_by("id").values("id", "parent_id", "content")
        )
        assert [r["content"] for r in rows] == ["one", "two", "three", ""]
        assert [r["parent_id"] for r in rows] == [None, rows[0]["id"], rows[1]["id"], rows[2]["id"]]
        assert NewConversation.objects.get(id=chat.id).active_leaf_id == rows[-1]["id"]
        assert NewConversation.objects.get(id=empty.id).active_leaf_id is None
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())


def test_an_imported_conversation_is_one_path(alice):
    import io
    import json

    from conversations.history import importing

    entry = {"title": "Old", "messages": [{"role": r, "content": r + "!"} for r in ("user", "assistant", "user")]}
    result = importing.import_file(alice, io.BytesIO(json.dumps(entry).encode()))
    convo = Conversation.objects.get(id=result.imported[0][0])
    assert [m.content for m in Tree.of(convo).path()] == ["user!", "assistant!", "user!"]
    assert convo.active_leaf_id == convo.messages.last().id
