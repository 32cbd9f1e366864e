"""The message tree of a conversation: its active path, siblings, and the leaf a branch leads to.

Messages form a tree through `Message.parent`; `Conversation.active_leaf`
ends the active path. A conversation is small enough to load whole, so every
question here is answered from one query, in Python.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from django.db import connection

if TYPE_CHECKING:  # models imports this module, not the other way round
    from .models import Conversation, Message


class Tree:
    def __init__(self, messages: list[Message], active_leaf_id: int | None) -> None:
        self.messages = sorted(messages, key=lambda m: (m.created_at, m.id))
        self.by_id = {m.id: m for m in self.messages}
        self.children: dict[int | None, list[Message]] = defaultdict(list)
        for message in self.messages:
            self.children[message.parent_id].append(message)
        self.active_leaf_id = active_leaf_id

    @classmethod
    def of(cls, conversation: Conversation) -> Tree:
        return cls(list(conversation.messages.all()), conversation.active_leaf_id)

    def add(self, message: Message) -> Message:
        """A message just created in the conversation (the newest), added without loading the tree again."""
        self.messages.append(message)
        self.by_id[message.id] = message
        self.children[message.parent_id].append(message)
        return message

    def streaming(self) -> bool:
        """Whether one of the conversation's replies is streaming."""
        return any(message.status == message.Status.STREAMING for message in self.messages)

    def leaf(self) -> Message | None:
        """The end of the active path (the newest message if none is recorded)."""
        leaf = self.by_id.get(self.active_leaf_id) if self.active_leaf_id else None
        return leaf or (self.messages[-1] if self.messages else None)

    def path(self, until: Message | None = None) -> list[Message]:
        """The active path, root first; with `until`, the path down to it, `until` itself excluded."""
        node = self.by_id.get(until.parent_id) if until is not None else self.leaf()
        path = []
        while node is not None:
            path.append(node)
            node = self.by_id.get(node.parent_id)
        return path[::-1]

    def siblings(self, message: Message) -> list[int]:
        """Ids of the messages sharing `message`'s parent and role, itself included, oldest first."""
        return [m.id for m in self.children[message.parent_id] if m.role == message.role]

    def newest_leaf_under(self, message: Message) -> Message:
        """The most recent leaf of the branch through `message` (the message itself if it has no children)."""
        leaves, stack = [], [message]
        while stack:
            node = stack.pop()
            kids = self.children[node.id]
            if not kids:
                leaves.append(node)
            stack.extend(kids)
        return max(leaves, key=lambda m: (m.created_at, m.id))

    def as_dict(self, message: Message) -> dict:
        return message.as_dict() | {"parent": message.parent_id, "siblings": self.siblings(message)}

    def path_dicts(self) -> list[dict]:
        """The active path as the API and the `path` frame give it."""
        return [self.as_dict(message) for message in self.path()]


def chain(conversation: Conversation, messages: list[Message] | None = None) -> None:
    """Link a conversation's messages, oldest first, into a single path and make it active.

    For messages stored in bulk (an import, an API call's history), which have
    no parents yet. `messages`, in order, saves reading their ids back where
    bulk_create returned them (PostgreSQL, SQLite 3.35+).
    """
    message_model = conversation.messages.model
    if messages is not None and all(m.pk is not None for m in messages):
        ids = [m.pk for m in messages]
    else:
        ids = list(conversation.messages.order_by("created_at", "id").values_list("id", flat=True))
    links = [message_model(id=child, parent_id=parent) for parent, child in zip(ids, ids[1:], strict=False)]
    if links:
        message_model.objects.bulk_update(links, ["parent"], batch_size=500)
    leaf = ids[-1] if ids else None
    if leaf is not None:
        type(conversation).objects.filter(id=conversation.id).update(active_leaf=leaf)
    conversation.active_leaf_id = leaf


# A page of a long transcript: the chat page shows this many messages of the
# active path at first, and loads earlier ones as the reader scrolls up.
PAGE_SIZE = 100


def path_page(conversation: Conversation, before: int | None = None, limit: int = PAGE_SIZE):
    """The last `limit` messages of the active path (of the path above message `before`, when given),
    oldest first, each with `sibling_ids`; and whether earlier messages exist.

    The path is walked up from its end in SQL (a recursive query, on SQLite
    and PostgreSQL alike), so a page costs the same at 50 messages or 50,000;
    Tree.of would read them all. Returns ([], False) for a `before` that is
    not a message of this conversation.
    """
    message_model = conversation.messages.model
    start = _page_start(conversation, before)
    if start is None:
        return [], False
    ids = path_ids(conversation, start, limit + 1)
    more, ids = len(ids) > limit, ids[:limit]
    by_id = {m.id: m for m in message_model.objects.filter(id__in=ids).select_related("feedback")}
    messages = [by_id[ident] for ident in reversed(ids)]  # the walk went up: newest first
    _attach_siblings(conversation, messages)
    return messages, more


def path_ids(conversation: Conversation, start: int, limit: int | None = None) -> list[int]:
    """The ids of the path up from message `start` (included) to the first message, newest first: all
    of them, or the first `limit`. Walked in SQL (a recursive query, on SQLite and PostgreSQL alike)."""
    table = conversation.messages.model._meta.db_table
    depth = "" if limit is None else "WHERE up.depth < %s"
    with connection.cursor() as cursor:
        cursor.execute(
            f"""WITH RECURSIVE up(id, parent_id, depth) AS (
                    SELECT id, parent_id, 1 FROM {table} WHERE id = %s AND conversation_id = %s
                    UNION ALL
                    SELECT m.id, m.parent_id, up.depth + 1 FROM {table} m JOIN up ON m.id = up.parent_id
                    {depth}
                ) SELECT id FROM up ORDER BY depth""",
            [start, conversation._meta.pk.get_db_prep_value(conversation.pk, connection)]
            + ([] if limit is None else [limit]),
        )
        return [row[0] for row in cursor.fetchall()]


def _page_start(conversation: Conversation, before: int | None) -> int | None:
    """The id the page ends with: the path's leaf, or the parent of `before`."""
    messages = conversation.messages
    if before is not None:
        return messages.filter(id=before).values_list("parent_id", flat=True).first()
    if conversation.active_leaf_id:
        return conversation.active_leaf_id
    return messages.order_by("-created_at", "-id").values_list("id", flat=True).first()


def _attach_siblings(conversation: Conversation, messages: list[Message]) -> None:
    """Each message's `sibling_ids` ("1,5,9"): the messages sharing its parent and role, oldest first."""
    parents = {m.parent_id for m in messages}
    places = conversation.messages.filter(parent_id__in=[p for p in parents if p is not None])
    if None in parents:
        places = places | conversation.messages.filter(parent__isnull=True)
    siblings: dict[tuple, list[int]] = defaultdict(list)
    for ident, parent_id, role in places.order_by("created_at", "id").values_list("id", "parent_id", "role"):
        siblings[(parent_id, role)].append(ident)
    for message in messages:
        message.siblings = siblings[(message.parent_id, message.role)]
        message.sibling_ids = ",".join(map(str, message.siblings))


def page_dicts(messages: list[Message]) -> list[dict]:
    """A page of path_page() as the API gives the path (Tree.path_dicts)."""
    return [m.as_dict() | {"parent": m.parent_id, "siblings": m.siblings} for m in messages]
