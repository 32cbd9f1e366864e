"""Search of a user's conversations: titles and message contents, with a snippet of the best match.

Search matches all words of `q` against titles and message contents. On
PostgreSQL it is full-text search with the `simple` configuration (no
stemming or stop words, so it works the same in every language) and each word
matching as a prefix (`pyth` finds `python`, as the user types), served by the
GIN index on titles of migration 0003_conversation_list and the stored,
indexed tsvector of each message of 0007_message_search_vector. On SQLite it
is a case-insensitive substring match (ASCII letters only: SQLite's LIKE).
conversations.history.listing pages the results like the list.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector, SearchVectorField
from django.db import connection
from django.db.models import Exists, Expression, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.expressions import Col

from ..models import Conversation, Message

SNIPPET_CHARS = 160
SEARCH_CONFIG = "simple"
SEARCH_ORDER = ("-updated_at", "-id")


@dataclass(frozen=True)
class Snippet:
    """Plain text around the best match, and where the matches are in it
    (`[start, end)` offsets in characters), so a client can highlight them
    without ever parsing markup."""

    text: str
    highlights: list[tuple[int, int]] = field(default_factory=list)


def _postgres() -> bool:
    return connection.vendor == "postgresql"


def _vector(column: str) -> SearchVector:
    return SearchVector(column, config=SEARCH_CONFIG)


# Migration 0007 stores each message's `to_tsvector('simple', content)` in
# this column, on PostgreSQL only (so it is no model field).
_STORED_VECTOR = SearchVectorField()
_STORED_VECTOR.set_attributes_from_name("search_vector")


class MessageVector(Expression):
    """A message's stored tsvector: the same value as `_vector("content")`,
    read rather than computed, which is what makes checking a conversation's
    messages one by one cheap (PostgreSQL only)."""

    output_field = SearchVectorField()

    def resolve_expression(self, query=None, allow_joins=True, reuse=None, summarize=False, for_save=False):
        # Resolving `content` finds the messages table's alias in this query
        # (a subquery renames it); the vector is the column beside it.
        content = F("content").resolve_expression(query, allow_joins, reuse, summarize, for_save)
        return Col(content.alias, _STORED_VECTOR, output_field=SearchVectorField())


def _tsquery(words: tuple[str, ...]) -> SearchQuery:
    # Each word a prefix, all of them required. _words left only \w
    # characters, so quoting each is safe.
    raw = " & ".join(f"'{word}':*" for word in words)
    return SearchQuery(raw, search_type="raw", config=SEARCH_CONFIG)


def _matching_messages(words: tuple[str, ...]) -> QuerySet:
    if _postgres():
        return Message.objects.alias(match=MessageVector()).filter(match=_tsquery(words))
    return Message.objects.filter(*[Q(content__icontains=word) for word in words])


def _matching_titles(conversations: QuerySet, words: tuple[str, ...]) -> QuerySet:
    """PostgreSQL: those of `conversations` whose title has all the words."""
    return conversations.alias(title_match=_vector("title")).filter(title_match=_tsquery(words))


def search(conversations: QuerySet, words: tuple[str, ...], count: int) -> list[Conversation]:
    """The newest `count` of `conversations` whose title, or any one message, has all the words."""
    has_message = Exists(_matching_messages(words).filter(conversation=OuterRef("pk")))
    if not _postgres():
        # SQLite has no index for words: walking the list newest first and
        # stopping at a full page beats scanning every message (measured:
        # bench/history.py), most of all for common words.
        titles = Q(*[Q(title__icontains=word) for word in words])
        return list(conversations.filter(titles | has_message).order_by(*SEARCH_ORDER)[:count])
    # "title OR EXISTS(message)" in one WHERE makes PostgreSQL fetch every
    # matching message before it can keep to the newest: for a word in a third
    # of all messages, most of the table. Apart, each half can stop at `count`:
    # the planner walks the conversations newest first and checks their
    # messages when a word is common, and starts from the GIN index when it is
    # rare. The page is the newest `count` of both halves together.
    halves = (_matching_titles(conversations, words), conversations.filter(has_message))
    found = {c.id: c for half in halves for c in half.order_by(*SEARCH_ORDER)[:count]}
    return sorted(found.values(), key=lambda c: (c.updated_at, c.id), reverse=True)[:count]


# Snippets


def snippets(conversations: list[Conversation], words: tuple[str, ...]) -> dict[uuid.UUID, Snippet]:
    """The best match of each conversation: its best-ranked matching message
    (PostgreSQL; the newest one on SQLite), else its title.

    The snippet is cut in Python on both backends rather than by ts_headline
    (SearchHeadline): ts_headline drops anything that looks like an HTML tag,
    and people ask about code, so `<div>` must show as written."""
    snippets = _message_snippets(conversations, words)
    for conversation in conversations:
        if conversation.id not in snippets:
            snippets[conversation.id] = _snippet_around(conversation.display_title, words)
    return snippets


def _message_snippets(conversations: list[Conversation], words: tuple[str, ...]) -> dict[uuid.UUID, Snippet]:
    # One best message per conversation of the page, looked up conversation
    # by conversation: only their own messages are checked, never every
    # message that has a common word.
    best_first = [SearchRank(MessageVector(), _tsquery(words)).desc()] if _postgres() else []
    best = _matching_messages(words).filter(conversation=OuterRef("pk")).order_by(*best_first, "-id")
    texts = (
        Conversation.objects.filter(id__in=[c.id for c in conversations])
        .order_by()
        .values_list("id", Subquery(best.values("content")[:1]))
    )
    return {cid: _snippet_around(text, words) for cid, text in texts if text is not None}


def _snippet_around(text: str, words: tuple[str, ...]) -> Snippet:
    """A window of `text` around its first match, with every match in it marked."""
    text = " ".join(text.split())
    alternatives = "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))
    # PostgreSQL matched word beginnings, so mark from there to the word's end;
    # SQLite matched substrings, so mark just those.
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})\w*" if _postgres() else alternatives, re.IGNORECASE)
    first = pattern.search(text)
    begin = max(0, (first.start() if first else 0) - SNIPPET_CHARS // 4)
    if begin:
        space = text.find(" ", begin)
        begin = space + 1 if 0 <= space < (first.start() if first else begin) else begin
    window = text[begin : begin + SNIPPET_CHARS]
    prefix = "…" if begin else ""
    suffix = "…" if begin + SNIPPET_CHARS < len(text) else ""
    shown = prefix + window + suffix
    highlights = [(m.start() + len(prefix), m.end() + len(prefix)) for m in pattern.finditer(window)]
    return Snippet(shown, highlights)
