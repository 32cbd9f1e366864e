"""The conversation list: pages and cursors, filters, archive and pin, the sidebar.

Search has its own file (test_search.py); import too (test_import.py).
"""

import base64
import json
from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from conversations.models import Conversation

pytestmark = pytest.mark.django_db

API = "/api/conversations/"


@pytest.fixture
def dated(conversation):
    """conversation(...) with updated_at `minutes` ago, so the order is known."""

    def make(user, minutes: int, **fields) -> Conversation:
        convo = conversation(user, **fields)
        convo.updated_at = timezone.now() - timedelta(minutes=minutes)
        convo.save(update_fields=["updated_at"])
        return convo

    return make


def cursor_of(key: list) -> str:
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode()


def ids(response) -> list[str]:
    assert response.status_code == 200, response.content
    return [c["id"] for c in response.json()["conversations"]]


def walk(client, **params) -> list[list[str]]:
    """Every page of a listing, following next_cursor."""
    pages, cursor = [], None
    while True:
        data = client.get(API, dict(params, cursor=cursor) if cursor else params).json()
        pages.append([c["id"] for c in data["conversations"]])
        cursor = data["next_cursor"]
        if cursor is None:
            return pages


def test_it_answers_a_page_and_a_null_cursor_at_the_end(alice_client, alice, conversation):
    convo = conversation(alice, messages=[("user", "one"), ("assistant", "two")])
    data = alice_client.get(API).json()
    assert data["next_cursor"] is None
    [item] = data["conversations"]
    assert item["id"] == str(convo.id)
    assert item["message_count"] == 2
    assert item["archived"] is False and item["pinned"] is False


def test_the_detail_json_has_archived_and_pinned(alice_client, alice, conversation):
    convo = conversation(alice, archived=True, pinned=True)
    data = alice_client.get(f"{API}{convo.id}/").json()
    assert data["archived"] is True and data["pinned"] is True


def test_it_pages_newest_first_with_cursors(alice_client, alice, dated):
    made = [dated(alice, minutes) for minutes in range(7)]  # made[0] is the newest
    pages = walk(alice_client, limit=3)
    assert [len(p) for p in pages] == [3, 3, 1]
    assert sum(pages, []) == [str(c.id) for c in made]


def test_it_pages_rows_with_the_same_time_by_id(alice_client, alice, conversation):
    moment = timezone.now()
    made = [conversation(alice, updated_at=moment) for _ in range(5)]
    pages = walk(alice_client, limit=2)
    assert sorted(sum(pages, [])) == sorted(str(c.id) for c in made)
    assert sum(pages, []) == sorted((str(c.id) for c in made), reverse=True)


def test_a_cursor_is_stable_when_chats_are_added(alice_client, alice, dated):
    made = [dated(alice, minutes) for minutes in range(1, 6)]
    first = alice_client.get(API, {"limit": 2}).json()
    dated(alice, 0, title="Brand new")  # lands on top, before the cursor
    rest = ids(alice_client.get(API, {"limit": 10, "cursor": first["next_cursor"]}))
    assert rest == [str(c.id) for c in made[2:]]


def test_pinned_chats_come_first_on_every_page(alice_client, alice, dated):
    plain = [dated(alice, minutes) for minutes in range(4)]
    pinned = [dated(alice, 10 + minutes, pinned=True) for minutes in range(3)]
    pages = walk(alice_client, limit=2)
    assert sum(pages, []) == [str(c.id) for c in pinned + plain]


def test_the_default_limit_is_50_and_at_most_200_may_be_asked(alice_client, alice):
    Conversation.objects.bulk_create([Conversation(user=alice, title=f"c{i}") for i in range(201)])
    assert len(ids(alice_client.get(API))) == 50
    assert len(ids(alice_client.get(API, {"limit": 200}))) == 200


@pytest.mark.parametrize(
    ("params", "says"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": cursor_of([1, 2])}, "cursor"),  # valid base64 JSON, wrong shape
        ({"cursor": cursor_of([0, "2026-01-01T00:00:00", "0" * 32])}, "cursor"),  # a time without a zone
        ({"source": "email"}, "source"),
        ({"archived": "yes"}, "archived"),
        ({"q": "x" * 201}, "q"),
    ],
)
def test_bad_parameters_get_a_400_that_names_them(alice_client, alice, params, says):
    response = alice_client.get(API, params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(says)


def test_a_list_cursor_is_refused_by_a_search(alice_client, alice, dated):
    for minutes in range(3):
        dated(alice, minutes, title="hello")
    cursor = alice_client.get(API, {"limit": 1}).json()["next_cursor"]
    response = alice_client.get(API, {"limit": 1, "cursor": cursor, "q": "hello"})
    assert response.status_code == 400
    assert "cursor" in response.json()["error"]


def test_it_filters_by_source(alice_client, alice, conversation):
    made = {source: conversation(alice, source=source) for source in Conversation.Source.values}
    for source, convo in made.items():
        assert ids(alice_client.get(API, {"source": source})) == [str(convo.id)]
    both = set(ids(alice_client.get(API, {"source": "web,import"})))
    assert both == {str(made["web"].id), str(made["import"].id)}
    assert len(ids(alice_client.get(API))) == 4


def test_archived_chats_are_left_out_unless_asked_for(alice_client, alice, conversation):
    kept = conversation(alice)
    archived = conversation(alice, archived=True)
    assert ids(alice_client.get(API)) == [str(kept.id)]
    assert ids(alice_client.get(API, {"archived": "1"})) == [str(archived.id)]


def test_the_list_never_shows_another_users_chats(bob_client, alice, bob, conversation):
    conversation(alice, title="Alice only", archived=True, source="api")
    conversation(alice, title="Alice only")
    for params in ({}, {"archived": "1"}, {"source": "api"}, {"q": "Alice"}):
        assert ids(bob_client.get(API, params)) == []


def test_the_list_needs_login(client):
    assert client.get(API).status_code == 302


def test_a_page_costs_the_same_queries_however_many_chats(alice_client, alice, django_assert_num_queries):
    def queries_for(count: int) -> int:
        Conversation.objects.bulk_create([Conversation(user=alice) for _ in range(count)])
        from django.db import connection
        from django.test.utils import CaptureQueriesContext

        with CaptureQueriesContext(connection) as captured:
            alice_client.get(API)
        return len(captured)

    assert queries_for(3) == queries_for(120)


# Archive and pin


FLAGS = [
    ("archive", "archived", True),
    ("unarchive", "archived", False),
    ("pin", "pinned", True),
    ("unpin", "pinned", False),
]


@pytest.mark.parametrize(("action", "name", "value"), FLAGS)
def test_it_sets_the_flag_and_keeps_updated_at(alice_client, alice, conversation, action, name, value):
    convo = conversation(alice, **{name: not value})
    before = convo.updated_at
    response = alice_client.post(f"/c/{convo.id}/{action}/")
    assert response.status_code == 302 and response["Location"] == convo.get_absolute_url()
    convo.refresh_from_db()
    assert getattr(convo, name) is value
    assert convo.updated_at == before


@pytest.mark.parametrize(("action", "name", "value"), FLAGS)
def test_it_answers_json_when_asked(alice_client, alice, conversation, action, name, value):
    convo = conversation(alice, **{name: not value})
    response = alice_client.post(f"/c/{convo.id}/{action}/", headers={"Accept": "application/json"})
    assert response.status_code == 200
    assert response.json()[name] is value


@pytest.mark.parametrize(("action", "name", "value"), FLAGS)
def test_it_refuses_another_users_chat_with_404(bob_client, alice, conversation, action, name, value):
    convo = conversation(alice, **{name: not value})
    assert bob_client.post(f"/c/{convo.id}/{action}/").status_code == 404
    convo.refresh_from_db()
    assert getattr(convo, name) is not value


@pytest.mark.parametrize("action", ["archive", "unarchive", "pin", "unpin"])
def test_flags_need_post_csrf_and_login(alice, conversation, action):
    convo = conversation(alice)
    url = f"/c/{convo.id}/{action}/"
    assert Client().post(url).status_code == 302  # to the login page
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(alice)
    assert strict.get(url).status_code == 405
    assert strict.post(url).status_code == 403
    convo.refresh_from_db()
    assert not convo.archived and not convo.pinned


def test_archiving_moves_a_chat_to_the_archived_view(alice_client, alice, conversation):
    convo = conversation(alice)
    alice_client.post(f"/c/{convo.id}/archive/")
    assert ids(alice_client.get(API)) == []
    assert ids(alice_client.get(API, {"archived": "1"})) == [str(convo.id)]
    alice_client.post(f"/c/{convo.id}/unarchive/")
    assert ids(alice_client.get(API)) == [str(convo.id)]


# The sidebar


def sidebar_links(html: str) -> list[str]:
    nav = html[html.index('<nav class="sidebar-nav"') : html.index("</nav>")]
    return [part.split('"')[0] for part in nav.split('<a href="/c/')[1:]]


def test_the_sidebar_shows_web_and_imported_chats_pinned_first(alice_client, alice, bob, dated):
    web = dated(alice, 1)
    imported = dated(alice, 2, source="import")
    pinned = dated(alice, 30, pinned=True)
    dated(alice, 0, source="api")
    dated(alice, 0, source="batch")
    dated(alice, 0, archived=True)
    dated(bob, 0)
    html = alice_client.get("/").content.decode()
    assert sidebar_links(html) == [f"{c.id}/" for c in (pinned, web, imported)]
    assert "data-next-url" not in html


def test_the_sidebar_shows_one_page_and_where_the_next_comes_from(alice_client, alice):
    Conversation.objects.bulk_create([Conversation(user=alice, title=f"chat {i}") for i in range(60)])
    html = alice_client.get("/").content.decode()
    assert len(sidebar_links(html)) == 50
    next_url = html.split('data-next-url="')[1].split('"')[0].replace("&amp;", "&")
    assert next_url.startswith("/api/conversations/?source=web,import&cursor=")
    assert len(ids(alice_client.get(next_url))) == 10


def test_the_chat_page_costs_the_same_queries_however_many_chats(alice_client, alice, conversation):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    current = conversation(alice, messages=[("user", "hi")])
    alice_client.get(current.get_absolute_url())  # the first view also records the models it sees

    def queries_for(count: int) -> int:
        Conversation.objects.bulk_create([Conversation(user=alice) for _ in range(count)])
        with CaptureQueriesContext(connection) as captured:
            assert alice_client.get(current.get_absolute_url()).status_code == 200
        return len(captured)

    assert queries_for(3) == queries_for(120)


@pytest.mark.parametrize(
    ("fields", "view", "heading"),
    [
        ({}, "source=web,import", "Your chats"),
        ({"archived": True}, "archived=1", "Archived chats"),
        ({"source": "api"}, "source=api", "API calls"),
        ({"source": "batch", "archived": True}, "archived=1", "Archived chats"),
        ({"source": "batch"}, "source=batch", "Batch runs"),
    ],
)
def test_a_chat_page_opens_the_list_on_the_view_that_holds_the_chat(
    alice_client, alice, conversation, fields, view, heading
):
    conversation(alice, title="Another chat")
    chat = conversation(alice, title="The open chat", **fields)
    page = alice_client.get(f"/c/{chat.id}/").content.decode()
    assert f'<option value="{view}" selected>' in page and page.count(" selected>") == 1
    assert f'<h2 id="chats-heading">{heading}</h2>' in page
    assert 'aria-current="page" title="The open chat"' in page
    assert ("Another chat" in page) == (view == "source=web,import")  # the list is that view's
