"""Search: `/api/conversations/?q=words`, on SQLite here and on PostgreSQL in the postgres pass.

PostgreSQL matches whole words and word beginnings (full-text search),
SQLite any substring; these tests use words both treat alike.
"""

from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from conversations.history import listing as history
from conversations.history import search as full_text
from conversations.live import replies
from conversations.models import Conversation

pytestmark = pytest.mark.django_db

API = "/api/conversations/"


def search(client, q: str, **params) -> list[dict]:
    response = client.get(API, dict(params, q=q))
    assert response.status_code == 200, response.content
    return response.json()["conversations"]


def titles(results: list[dict]) -> list[str]:
    return [r["title"] for r in results]


def marked(result: dict) -> list[str]:
    """The highlighted parts of a result's snippet, lower-cased."""
    return [result["snippet"][start:end].lower() for start, end in result["highlights"]]


def test_it_finds_words_in_titles_and_in_messages(alice_client, alice, conversation):
    conversation(alice, title="Sourdough starter tips")
    conversation(
        alice, title="Bread", messages=[("user", "How do I feed a sourdough starter?"), ("assistant", "Daily.")]
    )
    conversation(alice, title="Unrelated", messages=[("user", "Tell me about rye bread")])
    assert sorted(titles(search(alice_client, "sourdough"))) == ["Bread", "Sourdough starter tips"]


def test_it_needs_every_word_in_the_title_or_in_one_message(alice_client, alice, conversation):
    conversation(alice, title="Both", messages=[("user", "apples and pears")])
    conversation(alice, title="Split", messages=[("user", "apples"), ("assistant", "pears")])
    conversation(alice, title="apples", messages=[("user", "pears")])
    assert titles(search(alice_client, "pears apples")) == ["Both"]


def test_it_ignores_case(alice_client, alice, conversation):
    conversation(alice, title="Lower", messages=[("assistant", "the kubernetes cluster")])
    assert titles(search(alice_client, "KUBERNETES Cluster")) == ["Lower"]


def test_a_word_beginning_matches(alice_client, alice, conversation):
    conversation(alice, title="Lang", messages=[("user", "I love Python programming")])
    assert titles(search(alice_client, "pyth progr")) == ["Lang"]


def test_it_lists_newest_first(alice_client, alice, conversation):
    for minutes, title in [(3, "old"), (1, "new"), (2, "middle")]:
        convo = conversation(alice, title=title, messages=[("user", "gardening question")])
        convo.updated_at = timezone.now() - timedelta(minutes=minutes)
        convo.save(update_fields=["updated_at"])
    assert titles(search(alice_client, "gardening")) == ["new", "middle", "old"]


def test_another_users_chats_never_appear(alice_client, bob_client, alice, bob, conversation):
    conversation(bob, title="Bob's taxes", messages=[("user", "my secret taxes")])
    mine = conversation(alice, title="Alice", messages=[("user", "taxes are due")])
    assert [r["id"] for r in search(alice_client, "taxes")] == [str(mine.id)]
    assert "secret" not in str(search(alice_client, "secret taxes"))
    assert titles(search(bob_client, "taxes")) == ["Bob's taxes"]


def test_the_snippet_is_plain_text_with_the_matches_marked(alice_client, alice, conversation):
    text = "First line.\n\n<b>Careful</b> with the volcano: lava flows downhill & fast."
    conversation(alice, title="Geology", messages=[("user", "hello"), ("assistant", text)])
    [result] = search(alice_client, "volcano lava")
    assert "\n" not in result["snippet"] and "\x02" not in result["snippet"]
    assert "<b>Careful</b>" in result["snippet"]  # the text as written: the client escapes it
    assert set(marked(result)) == {"volcano", "lava"}


def test_the_snippet_comes_from_the_title_when_no_message_matches(alice_client, alice, conversation):
    conversation(alice, title="Notes about Norway", messages=[("user", "fjords")])
    [result] = search(alice_client, "norway")
    assert result["snippet"] == "Notes about Norway"
    assert marked(result) == ["norway"]


def test_a_long_message_gives_a_short_snippet(alice_client, alice, conversation):
    long = "filler words here " * 200 + "the needle is here " + "more filler " * 200
    conversation(alice, title="Haystack", messages=[("assistant", long)])
    [result] = search(alice_client, "needle")
    assert len(result["snippet"]) < 400
    assert marked(result) == ["needle"]


def test_search_pages_with_cursors(alice_client, alice, conversation):
    for number in range(5):
        conversation(alice, title=f"chat {number}", messages=[("user", "weather report")])
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        data = alice_client.get(API, dict(params, q="weather")).json()
        seen += [r["id"] for r in data["conversations"]]
        cursor = data["next_cursor"]
        if not cursor:
            break
    assert len(seen) == len(set(seen)) == 5


def test_search_keeps_to_the_filters(alice_client, alice, conversation):
    conversation(alice, title="archived", archived=True, messages=[("user", "telescope")])
    conversation(alice, title="api", source="api", messages=[("user", "telescope")])
    conversation(alice, title="web", messages=[("user", "telescope")])
    assert sorted(titles(search(alice_client, "telescope"))) == ["api", "web"]
    assert titles(search(alice_client, "telescope", archived="1")) == ["archived"]
    assert titles(search(alice_client, "telescope", source="api")) == ["api"]


def test_a_query_without_letters_or_digits_is_the_plain_list(alice_client, alice, conversation):
    conversation(alice, title="C++", messages=[("user", "!!!")])
    conversation(alice, title="Other")
    for q in ("!!! ???", "  "):
        results = search(alice_client, q)
        assert titles(results) == ["Other", "C++"]
        assert all("snippet" not in r for r in results)


def test_operators_are_just_text(alice_client, alice, conversation):
    conversation(alice, title="Cats", messages=[("user", "cats & dogs")])
    assert titles(search(alice_client, "cats & | ! ' :* dogs")) == ["Cats"]


def test_a_page_of_results_costs_a_fixed_number_of_queries(alice_client, alice, conversation):
    from django.test.utils import CaptureQueriesContext

    def queries_for(count: int) -> int:
        for _ in range(count):
            conversation(alice, messages=[("user", "lighthouse keeper"), ("assistant", "a lighthouse")])
        with CaptureQueriesContext(connection) as captured:
            assert len(search(alice_client, "lighthouse", limit=50)) <= 50
        return len(captured)

    assert queries_for(2) == queries_for(30)


def test_title_and_message_matches_page_together_newest_first(alice_client, alice, conversation):
    # PostgreSQL looks for title matches and message matches apart; the pages
    # must still be one list, newest first, each chat once.
    kinds = ["title", "message", "both", "message", "title", "neither", "both", "message"]
    for age, kind in enumerate(kinds):
        title = f"{kind} {age} orchid" if kind in ("title", "both") else f"{kind} {age}"
        text = "an orchid in bloom" if kind in ("message", "both") else "a fern"
        convo = conversation(alice, title=title, messages=[("user", text), ("assistant", "nice")])
        convo.updated_at = timezone.now() - timedelta(minutes=age)
        convo.save(update_fields=["updated_at"])
    seen, cursor = [], None
    while True:
        data = alice_client.get(API, {"q": "orchid", "limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert len(data["conversations"]) <= 3
        seen += titles(data["conversations"])
        cursor = data["next_cursor"]
        if not cursor:
            break
    expected = [f"{kind} {age}" for age, kind in enumerate(kinds) if kind != "neither"]
    assert [title.removesuffix(" orchid") for title in seen] == expected


def test_the_snippet_is_the_best_matching_message(alice_client, alice, conversation):
    # The newer match also repeats the word: the best on both backends (the
    # newest on SQLite, the best-ranked on PostgreSQL).
    conversation(
        alice,
        title="Tea",
        messages=[
            ("user", "oolong once"),
            ("assistant", "oolong, oolong and more oolong"),
            ("user", "thanks, no more tea"),
        ],
    )
    [result] = search(alice_client, "oolong")
    assert result["snippet"] == "oolong, oolong and more oolong"
    assert marked(result) == ["oolong", "oolong", "oolong"]


# Transactional: replies.finish runs its database work through Channels, which closes a connection
# that is inside a transaction (as pytest-django's plain database tests keep theirs).
@pytest.mark.django_db(transaction=True)
def test_a_finished_reply_is_found_by_its_final_words(alice_client, alice, conversation):
    convo = conversation(alice, title="Draft", messages=[("user", "hello")])
    reply = convo.append("assistant", "placeholder", status="streaming")
    async_to_sync(replies.finish)(convo.id, reply.id, replies.Ending("stop", "the glacier melted"))
    assert titles(search(alice_client, "glacier")) == ["Draft"]
    assert search(alice_client, "placeholder") == []


def test_postgres_search_reads_the_stored_vectors(alice_client, alice, conversation):
    if connection.vendor != "postgresql":
        pytest.skip("the stored tsvector exists only on PostgreSQL; the postgres pass runs this")
    from django.test.utils import CaptureQueriesContext

    conversation(alice, messages=[("user", "stored vectors")])
    with CaptureQueriesContext(connection) as captured:
        assert len(search(alice_client, "vectors")) == 1
    sql = "\n".join(query["sql"] for query in captured)
    # Computing to_tsvector(content) for each message checked is what made
    # common words slow (docs/history.md, "Numbers").
    assert '"search_vector" @@' in sql
    assert 'COALESCE(U0."content"' not in sql and 'COALESCE("conversations_message"."content"' not in sql


def test_postgres_search_uses_the_gin_indexes(alice, conversation):
    if connection.vendor != "postgresql":
        pytest.skip("GIN indexes exist only on PostgreSQL; the postgres pass runs this")
    conversation(alice, messages=[("user", "index me")])
    conversation(alice, title="index me too")
    with connection.cursor() as cursor:
        # The test tables are tiny: make the planner show what it would do at scale.
        cursor.execute("SET LOCAL enable_seqscan = off")
    assert "msg_search_vector" in full_text._matching_messages(("index",)).explain()
    titles_plan = full_text._matching_titles(Conversation.objects.all(), ("index",)).explain()
    assert "conv_title_fts" in titles_plan


@pytest.mark.django_db(transaction=True)
def test_the_migration_makes_old_messages_searchable(django_user_model):
    # From before 0007 to the latest schema (the code searching reads later columns too).
    executor = MigrationExecutor(connection)
    before, after = [("conversations", "0006_feedback_quota")], executor.loader.graph.leaf_nodes()
    executor.migrate(before)
    old = executor.loader.project_state(before).apps
    user = old.get_model("auth", "User").objects.create(username="carol")
    chat = old.get_model("conversations", "Conversation").objects.create(user_id=user.id, title="Old chat")
    old.get_model("conversations", "Message").objects.create(conversation=chat, role="user", content="a walrus")
    try:
        MigrationExecutor(connection).migrate(after)
        carol = django_user_model.objects.get(id=user.id)
        found = history.page(carol, history.ListQuery(words=("walrus",)))
        assert [c.id for c in found.conversations] == [chat.id]
        assert found.snippets[chat.id].text == "a walrus"
        # And back: 0006's expression index serves the old code again.
        MigrationExecutor(connection).migrate(before)
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'conversations_message'")
                indexes = {name for (name,) in cursor.fetchall()}
            assert "msg_content_fts" in indexes and "msg_search_vector" not in indexes
    finally:
        MigrationExecutor(connection).migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
