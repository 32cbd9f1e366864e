"""A conversation's group on the channel layer: every frame of its turns goes there.

`publish()` sends an event to every socket of a conversation (in every web
process); `client_frame()` is the frame a client sees for it; `follow()`
gives the frames to a caller without a socket (an API view, batch_prompts).
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator

from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer

logger = logging.getLogger(__name__)

# What any channel layer raises when its server is unreachable or a channel is full (see layer_errors).
_LAYER_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, ChannelFull)


def layer_errors() -> tuple[type[BaseException], ...]:
    """What the channel layer raises when Redis is unreachable or a channel is full.

    Redis's errors count once redis is loaded, which the Redis layer does on
    its way in; a site on the in-memory layer never imports redis (5 MB of
    memory). Used in ``except`` clauses, which look it up when something is
    raised.
    """
    exceptions = sys.modules.get("redis.exceptions")
    return _LAYER_ERRORS if exceptions is None else (exceptions.RedisError, *_LAYER_ERRORS)


def raise_lost_cancel() -> None:
    """Raise the cancel that a Redis command lost, if one did.

    redis-py writes each command under asyncio.wait_for(). On Python 3.11, a
    wait_for whose command completes just as its task is cancelled returns the
    result and drops the CancelledError (3.12 rebuilt wait_for on
    asyncio.timeout). The task still counts the cancel (Task.cancelling()), so
    code whose own path runs uncancelled raises it here. Without this, an API
    client that left as its reply was handed to the workers was noticed only
    when daphne gave the request up 10 s later, and the reply ran on meanwhile.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def group_name(conversation_id) -> str:
    return f"chat.{conversation_id}"


def user_group(user_id) -> str:
    """Every chat socket of one user, in every web process: a logout closes that session's."""
    return f"user.{user_id}"


async def publish(conversation_id, event: dict) -> None:
    """Send an event to every socket of the conversation; a layer that is down loses it.

    Losing a frame is better than losing the reply: the text is recorded
    before it is published, and `end` carries the final text, so a socket
    that missed some catches up when the reply ends.
    """
    try:
        await get_channel_layer().group_send(group_name(conversation_id), event)
    except layer_errors() as exc:
        logger.warning("cannot publish %s to %s: %s", event["type"], conversation_id, exc)


class follow:  # noqa: N801  (used like a function: `async with follow(...) as frames`)
    """The client frames of a conversation's turns, for a caller without a socket (an API view, a command).

        async with frames.follow(conversation_id) as followed:
            turn = await turns.start(conversation_id, "send", params, text)
            async for frame in followed.until_end(turn.message_id):
                ...

    Frames are dicts as the WebSocket sends them; following starts when the
    block is entered, so no frame of a turn started inside it is missed.
    """

    def __init__(self, conversation_id) -> None:
        self.group = group_name(conversation_id)
        self.layer = get_channel_layer()

    async def __aenter__(self) -> follow:
        self.channel = await self.layer.new_channel("follow.")
        await self.layer.group_add(self.group, self.channel)
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.layer.group_discard(self.group, self.channel)

    async def until_end(self, message_id: int | None = None) -> AsyncIterator[dict]:
        """Frames up to the `end` of `message_id` (of the first reply to end when None)."""
        while True:
            frame = client_frame(await self.layer.receive(self.channel))
            if frame is None:
                continue
            yield frame
            if frame["type"] == "end" and message_id in (None, frame["message_id"]):
                return


def client_frame(event: dict) -> dict | None:
    """The frame a client sees for a group event (None for internal ones)."""
    kind = event["type"]
    if kind == "chat.message":
        frame = {"type": "message", "message": event["message"]}
        return frame | ({"title": event["title"]} if "title" in event else {})
    if kind == "chat.start":
        frame = {"type": "start", "message_id": event["message_id"]}
        frame |= {name: event[name] for name in ("model", "parent", "siblings", "content") if name in event}
        return frame | ({"replaces": event["replaces"]} if event.get("replaces") else {})
    if kind == "chat.token":
        return {"type": "token", "message_id": event["message_id"], "text": event["text"]}
    if kind == "chat.title":
        return {"type": "title", "title": event["title"]}
    if kind == "chat.summary":
        return {"type": "summary", "summary": event["summary"]}
    if kind == "chat.queued":
        return {"type": "queued", "message_id": event["message_id"], "position": event["position"]}
    if kind == "chat.error":
        return {"type": "error", "code": event["code"], "message": event["message"]}
    if kind == "chat.end":
        return event["frame"]
    if kind == "chat.path":
        return {"type": "path", "messages": event["messages"], "summary": event.get("summary")}
    if kind == "chat.feedback":  # a rating changed in another tab (conversations.review.views)
        return {"type": "feedback", "message_id": event["message_id"], "feedback": event["feedback"]}
    return None
