"""The conversation list: filters, keyset pages, and search results paged the same way.

One module owns the list the sidebar renders and `/api/conversations/`
answers. Pages are keyset pages on the sort key (pinned first, then newest,
then id), never offsets: a cursor names the last row a page showed, so chats
created or moved to the top meanwhile do not shift later pages. The search
itself is conversations.history.search.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

from django.db.models import Count, Exists, OuterRef, Q, QuerySet
from django.http import QueryDict

from ..models import Conversation, Message, Share
from .search import Snippet, search, snippets

DEFAULT_LIMIT = 50
MAX_LIMIT = 200
MAX_QUERY_CHARS = 200
# The sidebar lists chats people had on the site; API and batch runs would
# crowd them out and are one filter away.
SIDEBAR_SOURCES = (Conversation.Source.WEB, Conversation.Source.IMPORT)

LIST_ORDER = ("-pinned", "-updated_at", "-id")


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
        rows = search(conversations, query.words, query.limit + 1)
    else:
        rows = list(conversations.order_by(*LIST_ORDER)[: query.limit + 1])
    more = len(rows) > query.limit
    rows = rows[: query.limit]
    next_cursor = encode_cursor(rows[-1], searching=query.searching) if more else None
    found = snippets(rows, query.words) if query.searching else {}
    return Page(rows, next_cursor, found)


@dataclass(frozen=True)
class View:
    """One of the sidebar's views: the picker's option (`params`, the list's query string), its heading."""

    params: str
    label: str
    heading: str
    query: ListQuery


VIEWS = (
    View("source=web,import", "Chats", "Your chats", ListQuery(sources=SIDEBAR_SOURCES)),
    View("archived=1", "Archived", "Archived chats", ListQuery(archived=True)),
    View("source=api", "API calls", "API calls", ListQuery(sources=(Conversation.Source.API,))),
    View("source=batch", "Batch runs", "Batch runs", ListQuery(sources=(Conversation.Source.BATCH,))),
)


def view_of(conversation: Conversation | None) -> View:
    """The view that lists `conversation` (the chats' for none), so an open chat is always in the list."""
    if conversation is None:
        return VIEWS[0]
    if conversation.archived:
        return VIEWS[1]
    return next((view for view in VIEWS[2:] if conversation.source in view.query.sources), VIEWS[0])


def sidebar(user, view: View = VIEWS[0]) -> Page:
    """The chat page's sidebar: the first page of the view's chats (web and imported ones, not archived)."""
    return page(user, view.query)


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
    # ASCII digits only: "²".isdigit() is true, but int("²") raises.
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LIMIT:
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
        # In UTC, as the query compares it: year 1 or 9999 with an offset overflows here, not in the database.
        return (pinned, moment.astimezone(UTC), uuid.UUID(hex=ident))
    except (binascii.Error, UnicodeDecodeError, ValueError, TypeError, AttributeError, OverflowError):
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
    conversations = Conversation.objects.for_user(user).filter(archived=query.archived, temporary=False)
    # Each item names its assistant and says whether it is shared.
    shared = Exists(Share.objects.filter(conversation=OuterRef("pk")))
    conversations = conversations.select_related("assistant").annotate(shared=shared)
    if query.sources:
        conversations = conversations.filter(source__in=query.sources)
    return conversations
