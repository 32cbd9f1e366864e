"""The conversation list: filters, keyset pages and search.

One module owns the list the sidebar renders and `/api/conversations/`
answers. Pages are keyset pages on the sort key (pinned first, then newest,
then id), never offsets: a cursor names the last row a page showed, so chats
created or moved to the top meanwhile do not shift later pages.

Search matches all words of `q` against titles and message contents. On
PostgreSQL it is full-text search with the `simple` configuration (no
stemming or stop words, so it works the same in every language) and each word
matching as a prefix (`pyth` finds `python`, as the user types), served by the
GIN index on titles of migration 0003_conversation_list and the stored,
indexed tsvector of each message of 0007_message_search_vector. On SQLite it
is a case-insensitive substring match (ASCII letters only: SQLite's LIKE).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime

from django.contrib.postgres.search import SearchQuery, SearchRank, SearchVector, SearchVectorField
from django.db import connection
from django.db.models import Count, Exists, Expression, F, OuterRef, Q, QuerySet, Subquery
from django.db.models.expressions import Col
from django.http import QueryDict

from .models import Conversation, Message

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_QUERY_CHARS = 200
# The sidebar lists chats people had on the site; API and batch runs would
# crowd them out and are one filter away.
SIDEBAR_SOURCES = (Conversation.Source.WEB, Conversation.Source.IMPORT)
SNIPPET_CHARS = 160
SEARCH_CONFIG = "simple"

LIST_ORDER = ("-pinned", "-updated_at", "-id")
SEARCH_ORDER = ("-updated_at", "-id")


class InvalidListQuery(ValueError):
    """A bad `limit`, `cursor`, `source`, `archived` or `q`; the message says which."""


@dataclass(frozen=True)
class ListQuery:
    limit: int = DEFAULT_LIMIT
    sources: tuple[str, ...] = ()
    archived: bool = False
    words: tuple[str, ...] = ()
    after: tuple | None = None

    @property
    def searching(self) -> bool:
        return bool(self.words)

    @classmethod
    def from_params(cls, params: QueryDict) -> ListQuery:
        """Validate the list's query parameters. Raises InvalidListQuery."""
        words = _words(params.get("q", ""))
        return cls(
            limit=_limit(params.get("limit")),
            sources=_sources(params.get("source")),
            archived=_archived(params.get("archived")),
            words=words,
            after=decode_cursor(params["cursor"], searching=bool(words)) if params.get("cursor") else None,
        )


@dataclass(frozen=True)
class Snippet:
    """Plain text around the best match, and where the matches are in it
    (`[start, end)` offsets in characters), so a client can highlight them
    without ever parsing markup."""

    text: str
    highlights: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Page:
    conversations: list[Conversation]
    next_cursor: str | None
    snippets: dict[uuid.UUID, Snippet] = field(default_factory=dict)


def page(user, query: ListQuery) -> Page:
    """One page of `user`'s conversations as `query` asks."""
    conversations = _filtered(user, query)
    if query.after is not None:
        conversations = conversations.filter(_after(query.after, searching=query.searching))
    if query.searching:
        rows = _search(conversations, query.words, query.limit + 1)
    else:
        rows = list(conversations.order_by(*LIST_ORDER)[: query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = encode_cursor(rows[-1], searching=query.searching) if more else None
    snippets = _snippets(rows, query.words) if query.searching else {}
    return Page(rows, next_cursor, snippets)


def sidebar(user) -> Page:
    """The chat page's sidebar: the first page of web and imported chats, not archived."""
    return page(user, ListQuery(sources=SIDEBAR_SOURCES))


def message_counts(conversations: list[Conversation]) -> dict[uuid.UUID, int]:
    """How many messages each conversation has, in one query for the whole page."""
    counts = (
        Message.objects.filter(conversation__in=conversations)
        .values("conversation_id")
        .annotate(n=Count("id"))
        .values_list("conversation_id", "n")
    )
    return dict(counts)


def as_dict(result: Page) -> dict:
    """The page as `/api/conversations/` answers it."""
    counts = message_counts(result.conversations)
    items = []
    for conversation in result.conversations:
        item = conversation.as_dict()
        item["message_count"] = counts.get(conversation.id, 0)
        snippet = result.snippets.get(conversation.id)
        if snippet is not None:
            item["snippet"] = snippet.text
            item["highlights"] = [list(span) for span in snippet.highlights]
        items.append(item)
    return {"conversations": items, "next_cursor": result.next_cursor}


# Parameters


def _limit(value: str | None) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise InvalidListQuery(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def _sources(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    sources = tuple(value.split(","))
    unknown = [s for s in sources if s not in Conversation.Source.values]
    if unknown:
        raise InvalidListQuery(f"source must be {', '.join(Conversation.Source.values)} (or several, comma-separated)")
    return sources


def _archived(value: str | None) -> bool:
    if value in (None, "", "0"):
        return False
    if value == "1":
        return True
    raise InvalidListQuery("archived must be 1 (archived chats only) or 0 (the default: the others)")


def _words(q: str) -> tuple[str, ...]:
    if len(q) > MAX_QUERY_CHARS:
        raise InvalidListQuery(f"q must be at most {MAX_QUERY_CHARS} characters")
    # Letters and digits only: the same words on both backends, and nothing
    # that could mean an operator in a tsquery.
    return tuple(dict.fromkeys(word.lower() for word in re.findall(r"\w+", q)))


# Cursors: the sort key of a page's last row, as URL-safe base64 JSON.


def encode_cursor(conversation: Conversation, *, searching: bool) -> str:
    key = [conversation.updated_at.isoformat(), conversation.id.hex]
    if not searching:
        key.insert(0, int(conversation.pinned))
    return base64.urlsafe_b64encode(json.dumps(key).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, *, searching: bool) -> tuple:
    """The sort key a cursor names. Raises InvalidListQuery for anything else,
    including a list cursor given to a search (their keys differ)."""
    try:
        key = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if searching:
            updated, ident = key
            pinned = None
        else:
            pinned, updated, ident = key
            if pinned not in (0, 1):
                raise ValueError(pinned)
        moment = datetime.fromisoformat(updated)
        if moment.tzinfo is None:
            raise ValueError(updated)
        return (pinned, moment, uuid.UUID(hex=ident))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError):
        raise InvalidListQuery("cursor is not valid here: pass back a next_cursor from the same query") from None


def _after(key: tuple, *, searching: bool) -> Q:
    """Rows after `key` in the (descending) sort order."""
    pinned, updated, ident = key
    newer = Q(updated_at__lt=updated) | Q(updated_at=updated, id__lt=ident)
    if searching:
        return newer
    return Q(pinned__lt=bool(pinned)) | (Q(pinned=bool(pinned)) & newer)


# Queries


def _filtered(user, query: ListQuery) -> QuerySet:
    conversations = Conversation.objects.for_user(user).filter(archived=query.archived)
    if query.sources:
        conversations = conversations.filter(source__in=query.sources)
    return conversations


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


def _search(conversations: QuerySet, words: tuple[str, ...], count: int) -> list[Conversation]:
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


def _snippets(conversations: list[Conversation], words: tuple[str, ...]) -> dict[uuid.UUID, Snippet]:
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
