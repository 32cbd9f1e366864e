"""Share links (docs/history.md, "Share links"): a snapshot of a chat's active path that others can read.

A share copies the path as it is when shared, so nothing added later, no
other branch and nothing else of its owner shows through it. Revoking deletes
the rows; the links then answer 404. "Continue this chat" copies the snapshot
into a new chat of the reader's.
"""

from __future__ import annotations

from django.db import transaction

from ..history import tree
from ..history.tree import Tree
from ..models import Conversation, Message, Share

# What a shared message shows: its text and who wrote it, none of its owner's ratings or usage.
SHOWN = ("id", "role", "content", "status", "model_name", "created_at")


class NotShareable(ValueError):
    """Why this conversation cannot be shared, in words for its owner."""


def share(conversation: Conversation) -> Share:
    """A new link to the conversation's active path as it is now."""
    if conversation.temporary:
        raise NotShareable("A temporary chat cannot be shared: it is deleted once you close it.")
    path = [message.as_dict() for message in Tree.of(conversation).path() if message.role != Message.Role.SYSTEM]
    if not path:
        raise NotShareable("There is nothing to share yet: send a message first.")
    messages = [{name: message[name] for name in SHOWN} for message in path]
    return Share.objects.create(conversation=conversation, title=conversation.display_title, messages=messages)


def as_dict(link: Share) -> dict:
    return {"title": link.title, "messages": link.messages}


@transaction.atomic
def continue_as(user, link: Share) -> Conversation:
    """A new chat of `user` holding the snapshot's messages, to go on from."""
    copy = Conversation.objects.create(user=user, title=link.title, title_source=Conversation.TitleSource.USER)
    Message.objects.bulk_create(
        Message(conversation=copy, role=m["role"], content=m["content"], model_name=m.get("model_name") or "")
        for m in link.messages
    )
    tree.chain(copy)
    return copy
