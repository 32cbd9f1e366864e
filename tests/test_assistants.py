"""Assistants (docs/assistants.md): the JSON API, the page, a new chat from one, and `/v1` with
`"model": "assistant:<id>"`."""

import json

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import Client

from conversations.api import keys as apikeys
from conversations.models import Assistant, Conversation, Message
from tests.api.test_api import post

pytestmark = pytest.mark.django_db

POET = {"name": "Poet", "system_prompt": "Answer in verse.", "params": {"temperature": 0.2}, "model": None}


def send(client, method: str, url: str, body=None):
    if method == "get":
        return client.get(url)
    data = json.dumps(body) if body is not None else ""
    return getattr(client, method)(url, data, content_type="application/json")


@pytest.fixture
def shared(staff, make_user):
    """Staff's assistants: one for everyone, one for a group, one private."""
    group = Group.objects.create(name="writers")
    for_all = Assistant.objects.create(owner=staff, name="Everyone's", everyone=True)
    for_group = Assistant.objects.create(owner=staff, name="Writers'")
    for_group.groups.add(group)
    Assistant.objects.create(owner=staff, name="Staff's own")
    return group, for_all, for_group


def test_a_user_creates_lists_changes_and_deletes_their_own(engine, alice_client, alice):
    created = send(alice_client, "post", "/api/assistants/", POET)
    assert created.status_code == 201, created.content
    poet = created.json()
    assert poet | {"id": 0} == {
        "id": 0,
        "name": "Poet",
        "system_prompt": "Answer in verse.",
        "params": {"temperature": 0.2},
        "model": None,
        "shared": False,
    }
    assert alice_client.get("/api/assistants/").json() == {"assistants": [poet]}
    url = f"/api/assistants/{poet['id']}/"
    changed = send(alice_client, "patch", url, {"name": "Sonneteer", "params": {"max_new_tokens": 40}})
    assert changed.status_code == 200
    assert changed.json()["name"] == "Sonneteer" and changed.json()["params"] == {"max_new_tokens": 40}
    assert changed.json()["system_prompt"] == "Answer in verse."  # what a PATCH leaves out stays
    assert send(alice_client, "delete", url).json() == {"deleted": True}
    assert not Assistant.objects.exists()


@pytest.mark.parametrize(
    "body, error",
    [
        ({"system_prompt": "x"}, "An assistant needs a name."),
        ({"name": "  "}, "name must not be empty."),
        ({"name": "x" * 101}, "name can have at most 100 characters."),
        ({"name": "A", "params": {"temperature": 5}}, "params: temperature"),
        ({"name": "A", "params": {"seed": 1}}, "params may set temperature"),
        ({"name": "A", "model": "no-such-model"}, "There is no model 'no-such-model' you may use."),
        ({"name": "A", "colour": "red"}, "Unknown field: colour"),
        ({"name": "A\x00"}, "name must not contain NUL characters."),
        (["name"], "The body must be a JSON object."),
    ],
)
def test_bad_fields_are_refused_naming_them(engine, alice_client, body, error):
    response = send(alice_client, "post", "/api/assistants/", body)
    assert response.status_code == 400 and response.json()["error"].startswith(error), response.json()
    assert not Assistant.objects.exists()


def test_shared_ones_are_listed_for_their_users_and_only_their_owner_changes_them(
    engine, alice, alice_client, bob_client, shared
):
    group, for_all, for_group = shared
    names = lambda client: [a["name"] for a in client.get("/api/assistants/").json()["assistants"]]  # noqa: E731
    assert names(alice_client) == ["Everyone's"]
    alice.groups.add(group)
    assert names(alice_client) == ["Everyone's", "Writers'"]
    assert alice_client.get(f"/api/assistants/{for_group.id}/").json()["shared"] is True
    assert send(alice_client, "patch", f"/api/assistants/{for_all.id}/", {"name": "Mine"}).status_code == 403
    assert send(alice_client, "delete", f"/api/assistants/{for_all.id}/").status_code == 403
    # Another user's private assistant is not found at all.
    private = Assistant.objects.create(owner=alice, name="Alice's")
    for method in ("get", "patch", "delete"):
        assert send(bob_client, method, f"/api/assistants/{private.id}/", {}).status_code == 404
    assert Assistant.objects.filter(id=private.id, name="Alice's").exists()


def test_changes_need_the_csrf_token(alice):
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert send(client, "post", "/api/assistants/", POET).status_code == 403
    assert not Assistant.objects.exists()


def test_a_new_chat_starts_from_an_assistant(engine, alice, alice_client, bob_client):
    model = engine.info.model_name
    poet = Assistant.objects.create(owner=alice, model_name=model, **{k: v for k, v in POET.items() if k != "model"})
    response = alice_client.post("/c/new/", {"assistant": str(poet.id), "system_prompt": "ignored"})
    chat = Conversation.objects.get()
    assert response.url == f"/c/{chat.id}/"
    assert (chat.system_prompt, chat.temperature, chat.top_p, chat.model_name) == ("Answer in verse.", 0.2, 0.9, model)
    assert alice_client.get(f"/api/conversations/{chat.id}/").json()["assistant"] == {"id": poet.id, "name": "Poet"}
    assert 'id="chat-assistant">Poet<' in alice_client.get(f"/c/{chat.id}/").content.decode()
    Message.objects.create(conversation=chat, role="user", content="Hi")
    assert "assistant Poet" in alice_client.get(f"/c/{chat.id}/export.md").content.decode()
    # Deleting the assistant leaves its chats as they were.
    poet.delete()
    chat.refresh_from_db()
    assert chat.assistant is None and chat.system_prompt == "Answer in verse."
    # Another user's private assistant: 404, and no chat.
    private = Assistant.objects.create(owner=alice, name="Alice's")
    assert bob_client.post("/c/new/", {"assistant": str(private.id)}).status_code == 404
    assert Conversation.objects.count() == 1


def test_the_page_creates_edits_and_deletes_and_says_what_is_wrong(engine, alice_client, alice, bob_client):
    page = alice_client.get("/assistants/")
    assert page.status_code == 200 and "No assistants yet." in page.content.decode()
    form = {"name": "Editor", "system_prompt": "Fix my grammar.", "model": "", "temperature": "0.1", "top_p": ""}
    response = alice_client.post("/assistants/", form, follow=True)
    assert "Created “Editor”." in response.content.decode()
    editor = Assistant.objects.get()
    assert (editor.params, editor.model_name) == ({"temperature": 0.1}, "")
    refused = alice_client.post(f"/assistants/{editor.id}/", form | {"temperature": "9"}, follow=True)
    assert "params: temperature" in refused.content.decode()
    alice_client.post(f"/assistants/{editor.id}/", form | {"name": "Proofreader"})
    editor.refresh_from_db()
    assert editor.name == "Proofreader"
    # Only the owner's page edits or deletes it.
    assert bob_client.get(f"/assistants/{editor.id}/").status_code == 404
    assert bob_client.post(f"/assistants/{editor.id}/delete/").status_code == 404
    alice_client.post(f"/assistants/{editor.id}/delete/")
    assert not Assistant.objects.exists()


def test_the_welcome_page_offers_the_users_assistants(engine, alice, alice_client, shared):
    Assistant.objects.create(owner=alice, name="Poet")
    page = alice_client.get("/").content.decode()
    assert 'name="assistant"' in page and ">Poet</option>" in page and ">Everyone&#x27;s</option>" in page
    assert ">Writers&#x27;</option>" not in page


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_the_api_starts_a_call_from_an_assistant(engine, alice, bob):
    poet = await Assistant.objects.acreate(
        owner=alice, name="Poet", system_prompt="Answer in verse.", params={"max_new_tokens": 5}
    )
    key = (await sync_to_async(apikeys.create)(alice, "tests"))[1]
    response = await post(key, {"model": f"assistant:{poet.id}", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200, response.content
    answer = response.json()
    assert answer["model"] == engine.info.model_name and answer["usage"]["completion_tokens"] == 5
    chat = await Conversation.objects.aget()
    assert (chat.system_prompt, chat.assistant_id, chat.max_new_tokens) == ("Answer in verse.", poet.id, 5)
    # The request's own parameters and system prompt win over the assistant's.
    body = {"model": f"assistant:{poet.id}", "max_tokens": 3, "messages": [{"role": "system", "content": "Be terse."}]}
    body["messages"].append({"role": "user", "content": "Hi"})
    answer = (await post(key, body)).json()
    assert answer["usage"]["completion_tokens"] == 3
    assert await Conversation.objects.filter(system_prompt="Be terse.", assistant=poet).aexists()
    # Another user's private assistant is no model of theirs.
    bobs_key = (await sync_to_async(apikeys.create)(bob, "tests"))[1]
    refused = await post(bobs_key, {"model": f"assistant:{poet.id}", "messages": [{"role": "user", "content": "Hi"}]})
    assert refused.status_code == 404 and refused.json()["error"]["code"] == "model_not_found"
