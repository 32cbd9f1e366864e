import json

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from conversations.models import Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def transcript(alice, conversation):
    convo = conversation(
        alice,
        title="About Paris",
        source="batch",
        model_name="tiny",
        messages=[("user", "What is the capital of France?")],
    )
    usage = {"prompt_tokens": 31, "completion_tokens": 3, "ttft_ms": 120, "duration_ms": 400}
    convo.append("assistant", "Paris is.", finish_reason="stop", **usage)
    return convo


def test_staff_see_the_conversation_list(staff_client, transcript):
    html = staff_client.get("/admin/conversations/conversation/").content.decode()
    assert "About Paris" in html and "alice" in html and "batch" in html


def test_staff_search_message_text(staff_client, transcript, alice, conversation):
    conversation(alice, title="Other", messages=[("user", "nothing here")])
    html = staff_client.get("/admin/conversations/conversation/", {"q": "capital of France"}).content.decode()
    assert "About Paris" in html and "Other" not in html


def test_staff_filter_by_source(staff_client, transcript, alice, conversation):
    conversation(alice, title="From the web")
    html = staff_client.get("/admin/conversations/conversation/", {"source__exact": "batch"}).content.decode()
    assert "About Paris" in html and "From the web" not in html


def test_staff_read_the_whole_transcript_read_only(staff_client, transcript):
    html = staff_client.get(f"/admin/conversations/conversation/{transcript.id}/change/").content.decode()
    assert html.index("What is the capital of France?") < html.index("Paris is.")
    assert "<p>120</p>" in html and "<p>Stop</p>" in html
    assert 'name="messages-0-content"' not in html  # read-only: no editable fields


def test_staff_export_selected_conversations(staff_client, transcript):
    url = "/admin/conversations/conversation/"
    response = staff_client.post(url, {"action": "export_json", "_selected_action": [str(transcript.id)]})
    data = json.loads(response.content)
    assert data[0]["messages"][1]["content"] == "Paris is."
    response = staff_client.post(url, {"action": "export_markdown", "_selected_action": [str(transcript.id)]})
    assert response.content.decode().startswith("# About Paris")


def test_non_staff_are_refused(alice_client, transcript):
    for url in ["/admin/conversations/conversation/", f"/admin/conversations/conversation/{transcript.id}/change/"]:
        response = alice_client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_message_count_column(staff_client, transcript):
    response = staff_client.get("/admin/conversations/conversation/")
    row = response.context["cl"].result_list[0]
    assert isinstance(row, Conversation) and row._message_count == 2


def test_the_search_and_the_count_read_messages_in_subqueries_only(staff_client, transcript, alice, conversation):
    """Issue 29, item 1: the count column and a search over messages each joined the messages table, so
    one chat of N messages made N² rows (a 50k-message chat held SQLite for minutes)."""
    big = conversation(alice, title="Big", messages=[("user", f"apples {i}") for i in range(30)])
    with CaptureQueriesContext(connection) as queries:
        html = staff_client.get("/admin/conversations/conversation/", {"q": "apples"}).content.decode()
    assert "Big" in html and "About Paris" not in html
    assert f'<td class="field-message_count">{big.messages.count()}</td>' in html
    joins = [q["sql"] for q in queries if 'JOIN "conversations_message"' in q["sql"]]
    assert joins == []


def test_the_count_column_counts_and_sorts(staff_client, transcript, alice, conversation):
    conversation(alice, title="Empty")
    html = staff_client.get("/admin/conversations/conversation/", {"o": "3"}).content.decode()
    assert '<td class="field-message_count">0</td>' in html and '<td class="field-message_count">2</td>' in html
    assert html.index("Empty") < html.index("About Paris")
