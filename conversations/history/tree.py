"""The message tree of a conversation: its active path, siblings, and the leaf a branch leads to.

Messages form a tree through `Message.parent`; `Conversation.active_leaf`
ends the active path. A conversation is small enough to load whole, so every
question here is answered from one query, in Python.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

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
