"""Property-based fuzzing of every JSON endpoint (issue 29): whatever a client sends, the answer is never
a 500, every error is in its endpoint's documented shape, and a refusal stores nothing.

- the OpenAI-compatible API: errors are `{"error": {"message", "type", "param", "code"}}`;
- the site's JSON endpoints (the list, a transcript page, feedback, import): `{"error": "..."}`.

No model is loaded here, so a body the API accepts is answered 503 (no model
ready) or 404 (a `model` nobody serves) after its checks: the fuzzing is of
the checks. Generation with fuzzed input runs through the socket
(test_fuzz_socket.py).
"""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from hypothesis import event, given
from hypothesis import strategies as st

from conversations.api import keys as apikeys
from conversations.models import Conversation, Message
from tests.fuzz.strategies import any_text, dumps, json_values, plain_text, raw_bodies, small_numbers

pytestmark = pytest.mark.django_db(transaction=True)

OPENAI_FIELDS = ["messages", "model", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop"]
OPENAI_FIELDS += ["stream", "stream_options", "n", "response_format", "tools", "logprobs", "presence_penalty", "user"]
ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool"]) | json_values
openai_messages = st.lists(
    st.fixed_dictionaries(
        {"role": ROLES},
        optional={
            "content": any_text | st.lists(st.fixed_dictionaries({"type": any_text, "text": any_text})) | json_values,
            "tool_calls": json_values,
        },
    ),
    max_size=4,
)
openai_bodies = st.fixed_dictionaries(
    {"messages": openai_messages},
    optional={name: small_numbers | json_values for name in OPENAI_FIELDS[1:]},
)


def client_for(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def openai_error(response) -> dict:
    assert response["Content-Type"] == "application/json", response.content[:300]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and isinstance(error["message"], str)
    return error


def site_error(response) -> str:
    assert response["Content-Type"] == "application/json", response.content[:300]
    message = response.json()["error"]
    assert isinstance(message, str) and message
    return message


@pytest.fixture
def key(alice) -> str:
    return apikeys.create(alice, "fuzz")[1]


plausible_bodies = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": st.just("user"), "content": plain_text}), min_size=1)},
    optional={"temperature": st.floats(0, 2), "max_tokens": st.integers(1, 6), "stream": st.booleans()},
)
any_body = st.one_of(plausible_bodies, openai_bodies, json_values).map(dumps).map(str.encode) | raw_bodies


@given(body=any_body)
def test_the_api_answers_any_body_in_openai_shape(key, body):
    response = Client().post(
        "/v1/chat/completions", body, content_type="application/json", headers={"Authorization": f"Bearer {key}"}
    )
    assert response.status_code in (400, 404, 413, 503), response.content[:300]
    error = openai_error(response)
    if response.status_code in (404, 503):
        assert error["code"] == {404: "model_not_found", 503: "model_not_ready"}[response.status_code]
    event(f"{response.status_code} {error['code']}")
    assert not Conversation.objects.exists()


# What a URL can carry once decoded (no surrogates, no control characters).
url_text = st.text(st.characters(exclude_categories=("Cs", "Cc")), max_size=30)


@given(path=url_text, method=st.sampled_from(["get", "post", "put", "delete"]))
def test_any_url_under_v1_answers_in_openai_shape(key, path, method):
    response = getattr(Client(), method)("/v1/" + path, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code < 500, response.content[:300]
    if response.status_code >= 400:
        openai_error(response)
    event(str(response.status_code))


@given(method=st.sampled_from(["get", "post", "put", "patch", "delete"]), query=url_text)
def test_the_model_list_answers_any_request(alice, method, query):
    response = getattr(client_for(alice), method)("/api/models/?" + query)
    if method == "get":
        assert response.status_code == 200 and set(response.json()) == {"models", "default"}
    else:
        assert response.status_code == 405


list_params = st.fixed_dictionaries(
    {}, optional={name: url_text for name in ("limit", "cursor", "source", "archived", "q", "other")}
)


@given(params=list_params)
def test_the_list_answers_any_query(alice, params):
    response = client_for(alice).get("/api/conversations/", params)
    assert response.status_code in (200, 400), response.content[:300]
    event(str(response.status_code))
    if response.status_code == 400:
        site_error(response)
    else:
        assert set(response.json()) == {"conversations", "next_cursor"}


@pytest.fixture
def chat(alice, conversation):
    return conversation(alice, messages=[("user", "Hi"), ("assistant", "Hello")])


page_limits = url_text | st.integers(-3, 600).map(str)
page_params = st.fixed_dictionaries({}, optional={"limit": page_limits, "before": url_text})


@given(params=page_params)
def test_a_transcript_page_answers_any_query(alice, chat, params):
    response = client_for(alice).get(f"/api/conversations/{chat.id}/", params)
    assert response.status_code in (200, 400), response.content[:300]
    event(str(response.status_code))
    if response.status_code == 400:
        site_error(response)


feedback_bodies = st.fixed_dictionaries({}, optional={"rating": small_numbers | json_values, "comment": any_text})


@given(body=feedback_bodies.map(dumps).map(str.encode) | json_values.map(dumps).map(str.encode) | raw_bodies)
def test_feedback_answers_any_body(alice, chat, body):
    reply = chat.messages.get(role="assistant")
    response = client_for(alice).post(f"/api/messages/{reply.id}/feedback/", body, content_type="application/json")
    assert response.status_code in (200, 400), response.content[:300]
    event(str(response.status_code))
    if response.status_code == 400:
        site_error(response)
    else:
        assert set(response.json()) == {"rating", "comment"}


chatsite_entries = st.fixed_dictionaries(
    {"messages": st.lists(st.fixed_dictionaries({"role": ROLES, "content": any_text | json_values}), max_size=3)},
    optional={
        name: any_text | json_values for name in ("title", "system_prompt", "params", "created_at", "model_name")
    },
)
chatgpt_nodes = st.fixed_dictionaries(
    {"id": st.sampled_from(["a", "b"]) | json_values, "parent": st.sampled_from(["a", "b", None]) | json_values},
    optional={
        "message": st.fixed_dictionaries(
            {
                "author": st.fixed_dictionaries({"role": ROLES}),
                "content": st.fixed_dictionaries({"parts": json_values}),
            },
            optional={"create_time": small_numbers | json_values},
        )
    },
)
chatgpt_entries = st.fixed_dictionaries(
    {
        "mapping": st.dictionaries(st.sampled_from(["a", "b"]), chatgpt_nodes, max_size=2) | json_values,
        "current_node": st.sampled_from(["a", "b"]) | json_values,
    },
    optional={"title": any_text, "create_time": small_numbers | json_values},
)
import_files = st.one_of(
    st.lists(chatsite_entries | chatgpt_entries | json_values, max_size=3).map(dumps).map(str.encode),
    (chatsite_entries | chatgpt_entries).map(dumps).map(str.encode),
    raw_bodies,
)


@given(body=import_files)
def test_import_answers_any_file_and_keeps_only_what_it_says(alice, body):
    before = Conversation.objects.count()
    upload = SimpleUploadedFile("export.json", body, "application/json")
    response = client_for(alice).post("/c/import/", {"file": upload}, headers={"Accept": "application/json"})
    assert response.status_code in (200, 400), response.content[:300]
    data = response.json()
    assert set(data) == {"imported", "conversations", "skipped", "error"}
    event(f"{response.status_code}: {data['imported']} imported, {len(data['skipped'])} skipped")
    assert Conversation.objects.count() == before + data["imported"]
    assert all(isinstance(skip["reason"], str) for skip in data["skipped"])
    for made in data["conversations"]:
        chat = Conversation.objects.get(id=made["id"])
        assert chat.user == alice and chat.source == "import"
        assert not Message.objects.filter(conversation=chat, status="streaming").exists()
