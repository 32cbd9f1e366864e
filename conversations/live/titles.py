"""Titles the chat's model writes after a chat's first reply (docs/history.md, "Titles").

A chat is first named after its first message (Conversation.title_from).
Once its first reply has ended, and its `end` has gone out, the model that
wrote the reply is asked for a short title, as background work: the local
engine runs it only on a row nobody waits for and cancels it for one who
comes (inference.Request.background), so it never delays a reply. The answer
is cleaned to one line of at most 60 characters; an answer with nothing
usable leaves the first line. It is stored only while the title is still the
first line's, so a rename by the user always wins, and then every tab of the
chat gets `{"type": "title"}`.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from inference import Finished, GenerationParams, InferenceError, Request

from ..models import Conversation, unstorable
from . import state
from .frames import layer_errors, publish

if TYPE_CHECKING:
    from inference import Engine

    from .replies import Ending, Turn

logger = logging.getLogger(__name__)

MAX_CHARS = 60
# What each side of the exchange the model reads keeps: a title needs the gist, and a short prompt is
# read quickly (a reply waiting for a row waits for the prompt being read to finish its chunk).
EXCERPT_CHARS = 600
# A title gives its row up to any reply that comes for it (cancelled); it is asked again this many times,
# after 1, 2, ... seconds.
ATTEMPTS = 4
INSTRUCTION = (
    "Write a short title, at most six words, for the conversation below. "
    "Reply with the title alone: no quotes, no full stop."
)
PARAMS = GenerationParams(temperature=0.0, max_new_tokens=20)
# Words a model puts before its answer, and characters around it, that are no part of a title.
LEAD_IN = re.compile(r"^(title|subject|topic)\s*:\s*", re.IGNORECASE)
WRAPPING = " \t\"'“”‘’«»`*#_."


def wanted(turn: Turn, ending: Ending) -> bool:
    """Whether this turn's end asks for a title: the first reply of a chat the first message named."""
    return settings.CHAT_TITLES and turn.title is not None and ending.reason in ("stop", "length") and bool(ending.text)


def start(turn: Turn, reply: str, engine: Engine) -> None:
    """Ask `engine` for the chat's title in the background; nothing waits for it."""
    state.current().run_in_background(write(turn.conversation_id, turn.history, reply, engine))


async def write(conversation_id: str, history: list[dict], reply: str, engine: Engine) -> str | None:
    """The model's title for the chat, stored and announced; None when it gave nothing usable, or the
    user renamed the chat meanwhile."""
    title = clean(await _ask(engine, prompt(history, reply)))
    try:
        if not title or not await _store(conversation_id, title):
            return None
    except DatabaseError as exc:  # the first line stays; nothing waits for this task to report it
        logger.warning("cannot store the title of %s: %s", conversation_id, exc)
        return None
    try:
        await publish(conversation_id, {"type": "chat.title", "title": title})
    except layer_errors() as exc:  # stored: a reload shows it
        logger.warning("cannot announce the title of %s: %s", conversation_id, exc)
    return title


def prompt(history: list[dict], reply: str) -> list[dict]:
    """The instruction, then the chat's first message and its reply, shortened."""
    asked = next((m["content"] for m in reversed(history) if m["role"] == "user"), "")
    exchange = f"User: {asked[:EXCERPT_CHARS]}\n\nAssistant: {reply[:EXCERPT_CHARS]}"
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": exchange}]


def clean(text: str) -> str:
    """One line of at most MAX_CHARS, cut at a word, without quotes or a lead-in; "" if nothing is left."""
    line = next((line for line in text.splitlines() if line.strip()), "")
    line = LEAD_IN.sub("", line.strip()).strip(WRAPPING)
    line = " ".join(line.split())
    if len(line) > MAX_CHARS:
        line = (line[:MAX_CHARS].rsplit(" ", 1)[0] or line[:MAX_CHARS]).strip(WRAPPING)
    if len(line) < 2 or unstorable(line):
        return ""
    return line


async def _ask(engine: Engine, messages: list[dict]) -> str:
    """The model's answer; "" when it gave none (the first line stays)."""
    for attempt in range(ATTEMPTS):
        if attempt:
            await asyncio.sleep(attempt)
        if not state.current().accepting:
            return ""  # shutting down
        request = Request(messages=messages, params=PARAMS, background=True)
        try:
            async for event in engine.stream(request):
                if isinstance(event, Finished) and event.result.finish_reason in ("stop", "length"):
                    return event.result.text
        except (InferenceError, asyncio.TimeoutError) as exc:
            logger.info("no title from the model: %s", exc)
            return ""
        # Cancelled: a reply needed its row. Asked again once the rows are less busy.
    return ""


@database_sync_to_async
def _store(conversation_id: str, title: str) -> bool:
    """Only over the first line's title: a title the user set is never replaced."""
    named_by_first_line = Conversation.objects.filter(
        id=conversation_id, title_source=Conversation.TitleSource.FIRST_LINE
    )
    return bool(named_by_first_line.update(title=title, title_source=Conversation.TitleSource.MODEL))
