"""A reply's end: `finish()` is the only writer of a reply's final status, text and usage, and the only
producer of its `end` frame, whoever ends it (a runner, a reaper, a shutdown, batch_prompts' turns).

Also here, because every runner needs them: what a turn hands its runner
(`Turn`), how a reply ended (`Ending`), and why a turn cannot start (`Refused`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any

from channels.db import database_sync_to_async
from django.db import DatabaseError, transaction

from inference import GenerationParams

from ..models import Message
from ..review import quotas
from . import state
from .frames import publish

logger = logging.getLogger(__name__)

# A final save that failed (a locked database) is retried this often until it lands.
SAVE_RETRY_SECONDS = 1.0
BUSY = "A reply is already being generated in this conversation."
RESTARTING = "The server is restarting; try again in a moment."
DB_BUSY = "The database is busy; try again in a moment."


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
    model: str = ""  # the model's id (conversations.endpoints.registry)
    replaces: int | None = None
    user_message: dict | None = None
    place: dict = field(default_factory=dict)  # the reply's `parent` and `siblings`, for the `start` frame
    title: str | None = None  # the conversation's new title, when this turn's message gave it one
    # A Continue: the reply's text and usage before this turn, which the new text and usage extend.
    prefill: str = ""
    before: dict = field(default_factory=dict)
    # The ids of history's messages after its system prompt, and the stored summary on that path
    # ({"text", "until"}), from which conversations.live.summaries builds what the model reads.
    path: list[int] = field(default_factory=list)
    summary: dict | None = None

    def grown(self, usage: dict) -> dict:
        """The reply's usage: this turn's `usage` added to what it had before (Message.USAGE_FIELDS)."""
        if not self.before:
            return usage
        total = dict(usage)
        for name in ("prompt_tokens", "completion_tokens", "duration_ms"):
            if usage.get(name) is not None or self.before.get(name) is not None:
                total[name] = (self.before.get(name) or 0) + (usage.get(name) or 0)
        first_token = self.before.get("ttft_ms")  # its first token came in the first turn
        total["ttft_ms"] = first_token if first_token is not None else usage.get("ttft_ms")
        return total


@dataclass
class Ending:
    """How a reply ended, as finish() stores and announces it."""

    reason: str
    text: str
    usage: dict = field(default_factory=dict)  # Message.USAGE_FIELDS
    error: tuple[str, str] | None = None  # (code, message) of an `error` frame sent before `end`


def usage_of(result: Any) -> dict:
    """A finished generation's usage (an inference.Result), as a reply stores it."""
    return {name: getattr(result, name) for name in Message.USAGE_FIELDS}


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
    for name in Message.USAGE_FIELDS:
        setattr(message, name, ending.usage.get(name))
    try:
        won = await _save_final(message, ending.usage)
    except DatabaseError as exc:
        logger.error("reply %s: cannot store its end (%s); retrying in the background", message_id, exc)
        ending.error = ending.error or ("generation_failed", "The reply could not be saved; the text so far is kept.")
        message.status, message.finish_reason = Message.Status.ERROR, "error"
        state.current().keep(asyncio.create_task(_retry(message)))
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


_FINAL_FIELDS = ("content", "finish_reason", "status")


@database_sync_to_async
def _save_final(message: Message, usage: dict) -> bool:
    """The conditional final save. An ending that knows no usage (a reaper's, a shutdown's) keeps what the
    reply's partial saves recorded, and `message` gets the stored figures for its `end` frame."""
    values = {name: getattr(message, name) for name in _FINAL_FIELDS}
    values |= {name: usage[name] for name in Message.USAGE_FIELDS if usage.get(name) is not None}
    with transaction.atomic():
        won = bool(Message.objects.filter(id=message.id, status=Message.Status.STREAMING).update(**values))
        if won:  # the reply's quota hold becomes what it spent, with its final row or not at all
            stored = Message.objects.filter(id=message.id).values(*Message.USAGE_FIELDS).first() or {}
            for name, value in stored.items():
                setattr(message, name, value)
            quotas.settle(message.id, quotas.spent(message))
    return won


async def _retry(message: Message) -> None:
    usage = {name: getattr(message, name) for name in Message.USAGE_FIELDS}
    while True:
        await asyncio.sleep(SAVE_RETRY_SECONDS)
        try:
            await _save_final(message, usage)
        except DatabaseError as exc:
            logger.warning("reply %s: still cannot store its end: %s", message.id, exc)
            continue
        logger.info("reply %s: its end is stored", message.id)
        return


@database_sync_to_async
def save_partial(message_id: int, text: str, spent: dict) -> None:
    """The text so far of a live reply, so a page load shows it, and its tokens so far (`prompt_tokens`,
    `completion_tokens`), so a reply whose process dies is charged for them; a failure is only logged."""
    try:
        rows = Message.objects.filter(id=message_id, status=Message.Status.STREAMING)
        rows.update(content=text, **{name: value for name, value in spent.items() if value is not None})
    except DatabaseError as exc:
        logger.warning("reply %s: cannot save its text so far: %s", message_id, exc)
