"""POST /c/import/: Chatsite export.json and ChatGPT conversations.json.

The view parses and stores in a thread of its own, with its own database
connection, so these tests commit (transaction=True) for that thread to see
the users they create.
"""

import io
import json
import tracemalloc

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError
from django.test import Client

from conversations.history import importing
from conversations.models import Conversation, Message

pytestmark = pytest.mark.django_db(transaction=True)

JSON = {"Accept": "application/json"}


def upload(client, data, name="export.json", **extra):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return client.post("/c/import/", {"file": SimpleUploadedFile(name, body, "application/json")}, **extra)


def chatsite_entry(title="Imported", messages=(("user", "Hi"), ("assistant", "Hello!")), **fields) -> dict:
    entry = {
        "title": title,
        "system_prompt": "Be brief.",
        "params": {"temperature": 0.3, "top_p": 0.8, "max_new_tokens": 99, "repetition_penalty": 1.1},
        "model_name": "smollm2",
        "source": "web",
        "created_at": "2025-03-01T10:00:00+00:00",
        "updated_at": "2025-03-02T11:00:00+00:00",
        "messages": [{"role": role, "content": text, "status": "complete"} for role, text in messages],
    }
    entry.update(fields)
    return entry


def chatgpt_node(node_id, parent, role=None, text=None, children=(), **message_fields) -> dict:
    message = None
    if role is not None:
        message = {
            "id": node_id,
            "author": {"role": role},
            "content": {"content_type": "text", "parts": [text]},
            "create_time": 1700000000.0,
            **message_fields,
        }
    return {"id": node_id, "message": message, "parent": parent, "children": list(children)}


def chatgpt_conversation(title="From ChatGPT") -> dict:
    """A root, a hidden system node, a question, two variants of the answer
    (the second is current), and a follow-up on the current one."""
    nodes = [
        chatgpt_node("root", None, children=["sys"]),
        chatgpt_node(
            "sys", "root", "system", "", children=["q1"], metadata={"is_visually_hidden_from_conversation": True}
        ),
        chatgpt_node("q1", "sys", "user", "What is a monad?", children=["a1", "a2"]),
        chatgpt_node("a1", "q1", "assistant", "An old answer.", children=[]),
        chatgpt_node("a2", "q1", "assistant", "A monoid in the category of endofunctors.", children=["q2"]),
        chatgpt_node("q2", "a2", "user", "Simpler please", children=["tool"]),
        chatgpt_node("tool", "q2", "tool", "search results", children=["a3"]),
        chatgpt_node("a3", "tool", "assistant", "A box with rules.", metadata={"model_slug": "gpt-4o"}),
    ]
    return {
        "title": title,
        "create_time": 1700000000.0,
        "update_time": 1700000500.5,
        "mapping": {node["id"]: node for node in nodes},
        "current_node": "a3",
    }


def contents(conversation: Conversation) -> list[tuple[str, str]]:
    return [(m.role, m.content) for m in conversation.messages.all()]


def test_it_imports_a_chatsite_export_round_trip(alice_client, alice, conversation):
    original = conversation(alice, title="Round trip", messages=[("user", "Ping?"), ("assistant", "Pong.")])
    exported = alice_client.get(f"/c/{original.id}/export.json").content
    response = upload(alice_client, exported, headers=JSON)
    assert response.status_code == 200
    data = response.json()
    assert data["imported"] == 1 and data["skipped"] == [] and data["error"] is None
    copy = Conversation.objects.get(id=data["conversations"][0]["id"])
    assert copy.id != original.id and copy.user == alice and copy.source == "import"
    assert copy.title == "Round trip"
    assert contents(copy) == [("user", "Ping?"), ("assistant", "Pong.")]


def test_it_imports_a_list_with_params_times_and_prompt(alice_client, alice):
    data = upload(alice_client, [chatsite_entry("One"), chatsite_entry("Two")], headers=JSON).json()
    assert [c["title"] for c in data["conversations"]] == ["One", "Two"]
    one = Conversation.objects.get(title="One")
    assert one.params() == {"temperature": 0.3, "top_p": 0.8, "max_new_tokens": 99, "repetition_penalty": 1.1}
    assert one.system_prompt == "Be brief." and one.model_name == "smollm2"
    assert one.created_at.isoformat() == "2025-03-01T10:00:00+00:00"
    assert one.updated_at.isoformat() == "2025-03-02T11:00:00+00:00"


def test_it_follows_chatgpt_current_node_back_to_the_root(alice_client, alice):
    data = upload(alice_client, [chatgpt_conversation()], name="conversations.json", headers=JSON).json()
    assert data["imported"] == 1, data
    convo = Conversation.objects.get(id=data["conversations"][0]["id"])
    assert convo.source == "import" and convo.title == "From ChatGPT"
    assert contents(convo) == [
        ("user", "What is a monad?"),
        ("assistant", "A monoid in the category of endofunctors."),
        ("user", "Simpler please"),
        ("assistant", "A box with rules."),
    ]
    assert convo.messages.last().model_name == "gpt-4o"
    assert convo.updated_at.timestamp() == 1700000500.5


def test_a_chatgpt_system_message_becomes_the_system_prompt(alice_client, alice):
    entry = chatgpt_conversation()
    entry["mapping"]["sys"]["message"]["content"]["parts"] = ["You are a pirate."]
    entry["mapping"]["sys"]["message"]["metadata"] = {}
    upload(alice_client, entry, headers=JSON)
    convo = Conversation.objects.get(user=alice)
    assert convo.system_prompt == "You are a pirate."
    assert contents(convo)[0] == ("user", "What is a monad?")


def test_bad_entries_are_named_and_skipped_and_the_rest_imported(alice_client, alice):
    cycle = chatgpt_conversation("Loop")
    cycle["mapping"]["root"]["parent"] = "a3"
    entries = [
        chatsite_entry("Good one"),
        "just a string",
        {"title": "Mystery", "foo": 1},
        chatsite_entry("Bad role", messages=(("wizard", "abracadabra"),)),
        chatsite_entry("Bad params", params={"temperature": 9}),
        dict(chatgpt_conversation("Lost"), current_node="nowhere"),
        cycle,
        chatgpt_conversation("Good two"),
    ]
    data = upload(alice_client, entries, headers=JSON).json()
    assert data["imported"] == 2
    assert sorted(Conversation.objects.filter(user=alice).values_list("title", flat=True)) == ["Good one", "Good two"]
    skipped = {s["entry"]: (s["title"], s["reason"]) for s in data["skipped"]}
    assert skipped[2] == ("", "not a conversation object")
    assert skipped[3][0] == "Mystery" and "neither a Chatsite export" in skipped[3][1]
    assert skipped[4] == ("Bad role", "message 1: role must be system, user or assistant")
    assert skipped[5][0] == "Bad params" and "temperature" in skipped[5][1]
    assert "current_node" in skipped[6][1]
    assert "cycle" in skipped[7][1]
    assert Message.objects.filter(content="abracadabra").count() == 0


def test_an_entry_that_fails_while_stored_leaves_nothing(alice_client, alice, monkeypatch):
    real = Message.objects.bulk_create

    def refuse_the_second(messages, **kwargs):
        if messages and messages[0].conversation.title == "Doomed":
            raise DatabaseError("disk full")
        return real(messages, **kwargs)

    monkeypatch.setattr(Message.objects, "bulk_create", refuse_the_second)
    data = upload(
        alice_client, [chatsite_entry("First"), chatsite_entry("Doomed"), chatsite_entry("Third")], headers=JSON
    )
    data = data.json()
    assert data["imported"] == 2
    assert data["skipped"] == [
        {"entry": 2, "title": "Doomed", "reason": "the database refused it (nothing of it was kept)"}
    ]
    assert not Conversation.objects.filter(title="Doomed").exists()
    assert Conversation.objects.filter(user=alice).count() == 2


@pytest.mark.parametrize("body", [b"hello", b"", b"   ", b"42", b"\xff\xfe garbage"])
def test_a_file_that_is_not_an_export_is_refused(alice_client, alice, body):
    response = upload(alice_client, body, headers=JSON)
    assert response.status_code == 400
    assert "not a JSON export" in response.json()["error"]
    assert not Conversation.objects.exists()


def test_a_file_cut_short_keeps_the_entries_before_the_cut(alice_client, alice):
    whole = json.dumps([chatsite_entry("Whole"), chatsite_entry("Cut")]).encode()
    response = upload(alice_client, whole[: whole.index(b'"Cut"') + 20], headers=JSON)
    data = response.json()
    assert response.status_code == 200 and data["imported"] == 1
    assert "not valid JSON" in data["error"]
    assert list(Conversation.objects.values_list("title", flat=True)) == ["Whole"]


def test_a_file_over_the_size_limit_is_refused(alice_client, alice, settings):
    settings.CHAT_IMPORT_MAX_MB = 1
    big = [chatsite_entry(f"chat {i}", messages=(("user", "x" * 1000),)) for i in range(1100)]
    response = upload(alice_client, big, headers=JSON)
    assert response.status_code == 413
    assert "larger than 1 MB" in response.json()["error"]
    assert not Conversation.objects.exists()


def test_a_missing_file_is_a_clear_400(alice_client, alice):
    response = alice_client.post("/c/import/", {}, headers=JSON)
    assert response.status_code == 400
    assert "Choose a file" in response.json()["error"]


def test_without_json_it_redirects_with_a_message(alice_client, alice):
    response = upload(alice_client, [chatsite_entry("Kept"), {"title": "Odd"}], follow=True)
    assert response.redirect_chain[-1][0] == "/"
    html = response.content.decode()
    assert "Imported 1 conversation." in html
    assert "Skipped entry 2 (Odd): neither a Chatsite export" in html
    assert "Kept" in html  # in the sidebar: imported chats are listed with web ones


def test_a_bad_file_without_json_returns_to_the_form(alice_client, alice):
    response = upload(alice_client, b"nope", follow=True)
    assert response.redirect_chain[-1][0] == "/c/import/"
    assert "not a JSON export" in response.content.decode()


def test_the_import_page_has_a_form(alice_client):
    html = alice_client.get("/c/import/").content.decode()
    assert 'enctype="multipart/form-data"' in html and 'name="file"' in html and "csrfmiddlewaretoken" in html


def test_import_needs_login_csrf_and_get_or_post(alice, alice_client):
    assert Client().get("/c/import/").status_code == 302
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert upload(strict, [chatsite_entry()]).status_code == 403
    assert alice_client.put("/c/import/").status_code == 405
    assert not Conversation.objects.exists()


def test_imported_chats_belong_to_the_uploader_only(alice_client, bob_client, alice, bob):
    data = upload(alice_client, chatsite_entry("Alice's import"), headers=JSON).json()
    imported = data["conversations"][0]["id"]
    assert bob_client.get(f"/c/{imported}/").status_code == 404
    assert bob_client.get("/api/conversations/").json()["conversations"] == []


def test_the_parser_streams_entry_by_entry(alice):
    """Memory follows the largest entry, not the file: the peak of Python
    allocations grows by far less than the file does (a parser that read the
    whole file first would hold at least the extra bytes; the growth that is
    left is the list of what was imported)."""
    importing.import_file(alice, io.BytesIO(json.dumps(chatsite_entry()).encode()))  # warm Django's caches

    def peak_for(count: int) -> tuple[int, int]:
        # Few entries of large messages: the file grows as fast, with a quarter of the rows to write.
        entries = [chatsite_entry(f"chat {i}", messages=(("user", "y" * 16_000),)) for i in range(count)]
        body = json.dumps(entries).encode()
        tracemalloc.start()
        try:
            result = importing.import_file(alice, io.BytesIO(body))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert len(result.imported) == count
        return peak, len(body)

    (small, small_bytes), (large, large_bytes) = peak_for(75), peak_for(300)
    assert large - small < (large_bytes - small_bytes) / 2, (small, large, small_bytes, large_bytes)
