"""A turn, from the frame that starts it to its `end`: the one owner.

Anything that starts a reply (the chat socket today; the API and
`batch_prompts` tomorrow) calls `start()`; anything that wants a turn's frames
without a socket iterates `follow()`. This module creates the rows, publishes
every frame of a turn to the conversation's group, and `finish()` is the only
writer of a reply's final status and text and the only producer of `end`.

Where the reply is generated is a runner (conversations.runners), chosen by
CHAT_INFERENCE the way SESSION_ENGINE chooses a session store, and imported by
name so no module imports its way back here.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError, transaction
from django.utils.module_loading import import_string

from inference import GenerationParams

from . import quotas
from .models import Conversation, Message
from .tree import Tree

logger = logging.getLogger(__name__)

RUNNERS = {"local": "conversations.runners.local.LocalRunner", "worker": "conversations.runners.worker.WorkerRunner"}
# What any channel layer raises when its server is unreachable or a channel is full (see layer_errors).
_LAYER_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError, ChannelFull)
# A final save that failed (a locked database) is retried this often until it lands.
SAVE_RETRY_SECONDS = 1.0
BUSY = "A reply is already being generated in this conversation."
RESTARTING = "The server is restarting; try again in a moment."
DB_BUSY = "The database is busy; try again in a moment."


def layer_errors() -> tuple[type[BaseException], ...]:
    """What the channel layer raises when Redis is unreachable or a channel is full.

    Redis's errors count once redis is loaded, which the Redis layer does on
    its way in; a site on the in-memory layer never imports redis (5 MB of
    memory). Used in ``except`` clauses, which look it up when something is
    raised.
    """
    exceptions = sys.modules.get("redis.exceptions")
    return _LAYER_ERRORS if exceptions is None else (exceptions.RedisError, *_LAYER_ERRORS)


class Refused(Exception):
    """The turn cannot start; `code` and `message` go into the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Gone(Refused):
    """The conversation was deleted (in another tab) after the caller looked it up."""

    def __init__(self) -> None:
        super().__init__("invalid", "This conversation no longer exists.")


@dataclass
class Turn:
    """One reply to generate: what a runner needs."""

    conversation_id: str
    message_id: int
    history: list[dict]
    params: GenerationParams
    replaces: int | None = None
    user_message: dict | None = None
    place: dict = field(default_factory=dict)  # the reply's `parent` and `siblings`, for the `start` frame
    title: str | None = None  # the conversation's new title, when this turn's message gave it one


@dataclass
class Ending:
    """How a reply ended, as finish() stores and announces it."""

    reason: str
    text: str
    usage: dict = field(default_factory=dict)  # prompt_tokens, completion_tokens, ttft_ms, duration_ms
    error: tuple[str, str] | None = None  # (code, message) of an `error` frame sent before `end`


def group_name(conversation_id) -> str:
    return f"chat.{conversation_id}"


# Set on SIGTERM: new turns are refused with `busy` (conversations.shutdown).
state = {"accepting": True}
_runners: dict[str, object] = {}


def runner():
    """The runner CHAT_INFERENCE names, one per process (read each time so tests can switch)."""
    mode = settings.CHAT_INFERENCE
    if mode not in _runners:
        _runners[mode] = import_string(RUNNERS[mode])()
    return _runners[mode]


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


# -- starting ------------------------------------------------------------------


async def start(
    conversation_id, kind: str, params: GenerationParams, text: str = "", message_id: int | None = None
) -> Turn:
    """Start a turn: `send` (a user message `text` and a reply), `edit` (a user message `text` beside
    message `message_id`, and a reply) or `regenerate` (a variant of the last reply, which stays).

    The new reply ends the active path. Returns once the reply is handed to the
    runner. Raises Refused (busy, the conversation is gone, nothing to
    regenerate or edit, the database is locked).
    """
    if not state["accepting"]:
        raise Refused("busy", RESTARTING)
    try:
        turn = await _create(str(conversation_id), kind, params, text, message_id)
    except DatabaseError as exc:
        logger.warning("cannot store a turn of %s: %s", conversation_id, exc)
        raise Refused("busy", DB_BUSY) from None
    if turn.user_message is not None:
        event = {"type": "chat.message", "message": turn.user_message}
        await publish(turn.conversation_id, event | ({"title": turn.title} if turn.title else {}))
    start_event = {"type": "chat.start", "message_id": turn.message_id, "replaces": turn.replaces}
    await publish(turn.conversation_id, start_event | turn.place)
    try:
        await runner().start(turn)
    except Refused as exc:
        # Nobody will generate it: end it now so the conversation is not stuck busy.
        await finish(turn.conversation_id, turn.message_id, Ending("error", "", error=(exc.code, exc.message)))
    except Exception:
        logger.exception("reply %s could not start", turn.message_id)
        error = ("generation_failed", "The reply could not be started; try again in a moment.")
        await finish(turn.conversation_id, turn.message_id, Ending("error", "", error=error))
    return turn


@database_sync_to_async
def _create(conversation_id: str, kind: str, params: GenerationParams, text: str, message_id: int | None) -> Turn:
    with transaction.atomic():
        conversation = _locked_idle(conversation_id)
        tree = Tree.of(conversation)
        user_message, replaces = None, None
        if kind == "regenerate":
            last = tree.leaf()
            if last is None or last.role != Message.Role.ASSISTANT:
                raise Refused("invalid", "There is no reply to regenerate.")
            replaces, parent = last.id, tree.by_id.get(last.parent_id)
        else:
            parent = tree.leaf() if kind == "send" else _edited(tree, message_id)
            user_message = Message.objects.create(
                conversation=conversation, role=Message.Role.USER, content=text, parent=parent
            )
            parent = user_message
        reply = Message.objects.create(
            conversation=conversation,
            role=Message.Role.ASSISTANT,
            status=Message.Status.STREAMING,
            model_name=_model_name(),
            parent=parent,
        )
        conversation.activate(reply)
        history = conversation.prompt_history(until=reply)
        _reserve_tokens(conversation, reply, history, params)
        untitled = not conversation.title
        conversation.start_turn(params.to_dict(), first_text=text or None)
        tree = Tree.of(conversation)
    return Turn(
        conversation_id=conversation_id,
        message_id=reply.id,
        history=history,
        params=params,
        replaces=replaces,
        user_message=tree.as_dict(tree.by_id[user_message.id]) if user_message else None,
        place={"parent": reply.parent_id, "siblings": tree.siblings(reply)},
        title=conversation.title if untitled and conversation.title else None,
    )


def _locked_idle(conversation_id: str) -> Conversation:
    """The conversation, locked for this transaction; Refused while one of its replies streams."""
    conversation = Conversation.objects.select_for_update().filter(id=conversation_id).first()
    if conversation is None:
        raise Gone
    if runner().in_progress(conversation_id) or conversation.live_reply():
        raise Refused("busy", BUSY)
    return conversation


def _edited(tree: Tree, message_id: int | None) -> Message | None:
    """The parent of the edited message (a user message of this conversation); Refused otherwise."""
    edited = tree.by_id.get(message_id) if message_id is not None else None
    if edited is None or edited.role != Message.Role.USER:
        raise Refused("invalid", "Only your own messages in this conversation can be edited.")
    return tree.by_id.get(edited.parent_id)


async def switch(conversation_id, message_id: int) -> list[dict]:
    """Make the branch through `message_id` active (down to its newest leaf) and send every tab the path."""
    try:
        path = await _switch(str(conversation_id), message_id)
    except DatabaseError as exc:
        logger.warning("cannot switch a branch of %s: %s", conversation_id, exc)
        raise Refused("busy", DB_BUSY) from None
    await publish(conversation_id, {"type": "chat.path", "messages": path})
    return path


@database_sync_to_async
def _switch(conversation_id: str, message_id: int) -> list[dict]:
    with transaction.atomic():
        conversation = _locked_idle(conversation_id)
        tree = Tree.of(conversation)
        target = tree.by_id.get(message_id)
        if target is None:
            raise Refused("invalid", "There is no such message in this conversation.")
        leaf = tree.newest_leaf_under(target)
        conversation.activate(leaf)
        tree.active_leaf_id = leaf.id
        return tree.path_dicts()


def _reserve_tokens(conversation: Conversation, reply: Message, history: list[dict], params) -> None:
    """Hold the reply's most tokens on the user's quota, or refuse the turn (its rows roll back)."""
    try:
        quotas.reserve(conversation.user_id, quotas.prompt_bound(history) + params.max_new_tokens, reply.id)
    except quotas.QuotaExceeded as exc:
        raise Refused("rate_limited", exc.message) from None


def _model_name() -> str:
    from . import runtime

    return runtime.model_name()


async def stop(conversation_id) -> bool:
    """Ask the conversation's live reply to stop; False when there is none."""
    return await runner().stop(str(conversation_id))


# -- ending ----------------------------------------------------------------------


def end_frame(message: Message) -> dict:
    """The `end` frame of a reply, from its (stored or about-to-be-stored) row: one formula for every figure."""
    return {
        "type": "end",
        "message_id": message.id,
        "finish_reason": message.finish_reason,
        "status": message.status,
        "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
        "timing": {
            "ttft_ms": message.ttft_ms,
            "duration_ms": message.duration_ms,
            "tokens_per_s": message.tokens_per_s,
        },
    }


async def finish(conversation_id, message_id: int, ending: Ending) -> bool:
    """Store how a reply ended and announce it (`error` if any, then `end`); the only place that does.

    Conditional: the first caller for a reply (its runner, a reaper, a
    shutdown) wins, later ones return False and announce nothing. When the
    database refuses the save (locked), the reply still ends for its
    sockets, and the save is retried in the background until it lands, so
    the stored text becomes the sent text and the conversation is usable.
    """
    message = Message(id=message_id, content=ending.text, finish_reason=ending.reason)
    message.status = Message.STATUS_FOR_REASON[ending.reason]
    for name in ("prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms"):
        setattr(message, name, ending.usage.get(name))
    try:
        won = await _save_final(message)
    except DatabaseError as exc:
        logger.error("reply %s: cannot store its end (%s); retrying in the background", message_id, exc)
        ending.error = ending.error or ("generation_failed", "The reply could not be saved; the text so far is kept.")
        message.status, message.finish_reason = Message.Status.ERROR, "error"
        _retry_later(message)
        won = True
    if not won:
        return False
    if ending.error:
        code, text = ending.error
        await publish(conversation_id, {"type": "chat.error", "code": code, "message": text})
    # `content` is for the sockets only (see ChatConsumer.chat_end): a socket
    # that missed text gets it before `end`.
    await publish(conversation_id, {"type": "chat.end", "frame": end_frame(message), "content": ending.text})
    logger.info("reply %s ended: %s, %s tokens", message_id, ending.reason, message.completion_tokens)
    return True


_FINAL_FIELDS = ["content", "finish_reason", "status", "prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms"]


@database_sync_to_async
def _save_final(message: Message) -> bool:
    values = {name: getattr(message, name) for name in _FINAL_FIELDS}
    with transaction.atomic():
        won = bool(Message.objects.filter(id=message.id, status=Message.Status.STREAMING).update(**values))
        if won:  # the reply's quota hold becomes what it spent, with its final row or not at all
            quotas.settle(message.id, quotas.spent(message))
    return won


_retries: set[asyncio.Task] = set()


def _retry_later(message: Message) -> None:
    async def retry() -> None:
        while True:
            await asyncio.sleep(SAVE_RETRY_SECONDS)
            try:
                await _save_final(message)
            except DatabaseError as exc:
                logger.warning("reply %s: still cannot store its end: %s", message.id, exc)
                continue
            logger.info("reply %s: its end is stored", message.id)
            return

    task = asyncio.create_task(retry())
    _retries.add(task)
    task.add_done_callback(_retries.discard)


async def saves_pending(timeout: float) -> None:
    """Wait (up to `timeout`) for final saves still being retried; shutdown calls it."""
    if _retries:
        await asyncio.wait(set(_retries), timeout=timeout)


@database_sync_to_async
def save_partial(message_id: int, text: str) -> None:
    """The text so far of a live reply, so a page load shows it; a failure is only logged."""
    try:
        Message.objects.filter(id=message_id, status=Message.Status.STREAMING).update(content=text)
    except DatabaseError as exc:
        logger.warning("reply %s: cannot save its text so far: %s", message_id, exc)


# -- following -------------------------------------------------------------------


class follow:  # noqa: N801  (used like a function: `async with follow(...) as frames`)
    """The client frames of a conversation's turns, for a caller without a socket (an API view, a command).

        async with turns.follow(conversation_id) as frames:
            turn = await turns.start(conversation_id, "send", params, text)
            async for frame in frames.until_end(turn.message_id):
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
        frame |= {name: event[name] for name in ("parent", "siblings") if name in event}
        return frame | ({"replaces": event["replaces"]} if event.get("replaces") else {})
    if kind == "chat.token":
        return {"type": "token", "message_id": event["message_id"], "text": event["text"]}
    if kind == "chat.queued":
        return {"type": "queued", "message_id": event["message_id"], "position": event["position"]}
    if kind == "chat.error":
        return {"type": "error", "code": event["code"], "message": event["message"]}
    if kind == "chat.end":
        return event["frame"]
    if kind == "chat.path":
        return {"type": "path", "messages": event["messages"]}
    if kind == "chat.feedback":  # a rating changed in another tab (conversations.feedback_views)
        return {"type": "feedback", "message_id": event["message_id"], "feedback": event["feedback"]}
    return None
