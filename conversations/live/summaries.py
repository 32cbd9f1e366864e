"""Summaries of a chat's oldest turns, once the chat no longer fits its model's context (docs/history.md, "Summaries").

Left alone, an engine trims a chat longer than its context by leaving the
oldest turns out, and the model forgets what the user said first. Instead,
before a reply is generated, `prompt()` gives run_reply the messages the model
reads:

- The newest stored summary on the turn's path stands in for the messages it
  covers, in the system message (Turn.summary, looked up by `stored()` when
  the turn starts).
- When what is left still does not fit, the oldest turns that do not are
  summarised by the chat's own model, together with the summary they extend.
  The turn waits for that (its cost is that turn's time to first token), and
  the new summary is stored and announced to every tab:
  `{"type": "summary", "summary": {"text", "until"}}`.

A summary is the model's notes and, word for word, the user's short messages
among the turns it covers: that is where people state names, preferences and
instructions, which a small model's notes lose. It covers whole turns (a
user message and its replies), and a quarter of the context more than the
turn needs, so the turns after it fit without a summary each. Messages form
a tree, so a summary serves every branch through its last message
(`until`); an edit above it starts a branch that gets its own. Writing one
is not charged to the user's quota, as titles are not.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError

from inference import Finished, GenerationParams, InferenceError, Request

from ..history.tree import path_ids
from ..models import Conversation, Message, Summary
from ..models.summaries import compose
from ..review import quotas
from .frames import layer_errors, publish

if TYPE_CHECKING:
    from threading import Event

    from inference import Engine

    from .replies import Turn

logger = logging.getLogger(__name__)

# The longest summary the model writes, in tokens (less on a model whose context is small: SUMMARY_SHARE
# of it).
SUMMARY_TOKENS = 200
SUMMARY_SHARE = 8
# A summary frees this share of the context beyond what its turn needs.
HEADROOM_SHARE = 4
INSTRUCTION = (
    "You keep the notes of a conversation for an assistant that can no longer see its earlier messages. "
    "Summarise the conversation below in a few plain sentences. Keep every fact the user gave "
    "(names, numbers, dates, preferences), what they asked for, and what was answered or decided."
)
# A user's message this short, on one line, is kept word for word (Summary.said).
SAID_CHARS = 200
HEADER = "Summary of the earlier conversation, whose messages are left out here:"


def stored(path: list[Message]) -> dict | None:
    """The newest summary on `path` (a turn's prompt_path) as Turn.summary ({"text", "until", "notes",
    "said"}: Summary.as_turn); None if there is none."""
    if not path:
        return None
    on_path = {message.id for message in path}
    # The conversation's few summaries, matched here: an IN list of the whole path costs more to compile
    # than the query does to run, on every turn (docs/models.md, "Measured").
    summaries = Summary.objects.filter(conversation_id=path[0].conversation_id).order_by("-covered")
    summary = next((s for s in summaries if s.until_id in on_path), None)
    return summary.as_turn() if summary else None


def on_active_path(conversation: Conversation) -> dict | None:
    """The summary the next turn of the active path starts from, for the conversation's JSON and page."""
    summaries = list(conversation.summaries.order_by("-covered"))
    if not summaries or conversation.active_leaf_id is None:
        return None
    on_path = set(path_ids(conversation, conversation.active_leaf_id))
    return next((s.as_dict() for s in summaries if s.until_id in on_path), None)


async def prompt(turn: Turn, engine: Engine, cancel: Event) -> list[dict]:
    """The messages the model reads for `turn`: its stored summary in place of what it covers, and a
    longer summary, written now, when that still leaves the turn without room."""
    head = 1 if turn.history and turn.history[0]["role"] == "system" else 0
    if len(turn.history) - head != len(turn.path) or (turn.summary and turn.summary["until"] not in turn.path):
        return turn.history  # a sender whose path does not match its history (an older web process)
    system, kept, kept_ids = _split(turn, head)
    messages = _assemble(system, turn.summary["text"] if turn.summary else "", kept, engine)
    if not settings.CHAT_SUMMARIES or await _fits(engine, messages, turn.params.max_new_tokens, turn.prefill):
        return messages
    cover = await asyncio.to_thread(_cover, engine, system, kept, turn)
    if not cover:
        return messages  # only the newest message is left: the engine refuses or trims it, saying why
    started = time.monotonic()
    covered = kept[:cover]
    try:
        notes = await _write(engine, turn.summary["notes"] if turn.summary else "", covered, cancel)
    except InferenceError as exc:
        logger.warning("no summary from the model for reply %s: %s", turn.message_id, exc)
        notes = turn.summary["notes"] if turn.summary else ""
    if cancel.is_set():
        return messages  # stopped while the model summarised: nothing half-done is stored
    said = _said(turn.summary["said"] if turn.summary else [], covered, engine.context_tokens())
    if not notes and not said:
        return messages  # nothing to stand in for them: the engine trims, as before
    turn.summary = {"text": compose(notes, said), "until": kept_ids[cover - 1], "notes": notes, "said": said}
    await _store(turn, len(turn.path) - len(kept) + cover, round((time.monotonic() - started) * 1000))
    return _assemble(system, turn.summary["text"], kept[cover:], engine)


def _said(earlier: list[str], covered: list[dict], context: int) -> list[str]:
    """The user's short messages among `covered`, after those of the summary it extends; the oldest
    go first once they pass twice the notes' tokens in characters (a token is three to four)."""
    said = [*earlier]
    said += [m["content"].strip() for m in covered if m["role"] == "user" and _short(m["content"])]
    room = 2 * summary_tokens(context)
    while said and sum(len(text) for text in said) > room:
        said.pop(0)
    return said


def _short(text: str) -> bool:
    return 0 < len(text.strip()) <= SAID_CHARS and "\n" not in text.strip()


def _split(turn: Turn, head: int) -> tuple[str | None, list[dict], list[int]]:
    """The chat's system prompt, and the messages after its summary (with their ids)."""
    system = turn.history[0]["content"] if head else None
    start = turn.path.index(turn.summary["until"]) + 1 if turn.summary else 0
    return system, turn.history[head + start :], turn.path[start:]


def _assemble(system: str | None, summary: str, kept: list[dict], engine: Engine) -> list[dict]:
    """The prompt: the system prompt (the engine's own where the chat has none) with the summary, then `kept`."""
    if not summary:
        return ([{"role": "system", "content": system}] if system is not None else []) + kept
    config = getattr(engine, "config", None)  # a local engine's; an endpoint's model has its own default
    base = system if system is not None else getattr(config, "default_system_prompt", "")
    content = f"{base}\n\n{HEADER}\n{summary}" if base else f"{HEADER}\n{summary}"
    return [{"role": "system", "content": content}, *kept]


async def _fits(engine: Engine, messages: list[dict], max_new_tokens: int, prefill: str) -> bool:
    # Most chats are far shorter than the context: a bound on their tokens says so without the tokenizer.
    bound = quotas.prompt_bound([*messages, {"content": prefill}])
    if bound + max_new_tokens <= engine.context_tokens():
        return True
    return await asyncio.to_thread(engine.fits, messages, max_new_tokens, prefill)


def _cover(engine: Engine, system: str | None, kept: list[dict], turn: Turn) -> int:
    """How many of `kept`'s first messages (whole turns, never the newest message) to summarise: the
    fewest that leave the turn room, with the summary and the headroom (binary search: covering more
    never makes the prompt longer)."""
    starts = [i for i in range(1, len(kept)) if kept[i]["role"] == "user"]  # the newest message's among them
    if not starts:
        return 0
    context = engine.context_tokens()
    needed = turn.params.max_new_tokens + 2 * summary_tokens(context)  # the notes, and the user's words
    if needed + context // HEADROOM_SHARE < context:
        needed += context // HEADROOM_SHARE

    def fits(cut: int) -> bool:
        return engine.fits(_assemble(system, "-", kept[cut:], engine), needed, turn.prefill)

    first = bisect.bisect_left(starts, True, key=fits)  # the first cut that fits; past the end if none does
    return starts[min(first, len(starts) - 1)]


def summary_tokens(context: int) -> int:
    return max(16, min(SUMMARY_TOKENS, context // SUMMARY_SHARE))


async def _write(engine: Engine, previous: str, messages: list[dict], cancel: Event) -> str:
    """The summary of `messages`, extending `previous`: in pieces, where they do not fit the context at once."""
    running = previous
    while messages:
        take = await asyncio.to_thread(_piece, engine, running, messages)
        running = await _ask(engine, summary_prompt(running, messages[:take], engine.context_tokens()), cancel)
        if not running:
            return ""
        messages = messages[take:]
    return running


def _piece(engine: Engine, running: str, messages: list[dict]) -> int:
    """How many of `messages`' first ones one summary prompt can take (at least one)."""
    context = engine.context_tokens()
    reserve = summary_tokens(context)
    take = len(messages)
    while take > 1 and not engine.fits(summary_prompt(running, messages[:take], context), reserve):
        take //= 2
    return take


def summary_prompt(previous: str, messages: list[dict], context: int) -> list[dict]:
    """The instruction, then the summary so far and the messages it is to take in.

    A message is cut to half the context in characters (a token is a few
    characters), so that any one of them fits.
    """
    limit = max(200, context // 2)
    lines = [f"{m['role'].capitalize()}: {_clip(m['content'], limit)}" for m in messages]
    earlier = f"Summary so far:\n{previous}\n\n" if previous else ""
    text = f"{earlier}Conversation:\n" + "\n\n".join(lines)
    return [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}]


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + " […]"


async def _ask(engine: Engine, messages: list[dict], cancel: Event) -> str:
    """The model's summary; "" when it gave none, or the turn was stopped meanwhile."""
    params = GenerationParams(temperature=0.0, max_new_tokens=summary_tokens(engine.context_tokens()))
    async for event in engine.stream(Request(messages=messages, params=params, cancel=cancel)):
        if isinstance(event, Finished) and event.result.finish_reason in ("stop", "length"):
            return event.result.text.strip()
    return ""


async def _store(turn: Turn, covered: int, duration_ms: int) -> None:
    """Store the turn's new summary and tell every tab; the turn uses it either way."""
    summary = turn.summary or {}
    try:
        await database_sync_to_async(_save)(turn.conversation_id, summary, covered, duration_ms)
    except DatabaseError as exc:  # its message was deleted meanwhile, or a locked database
        logger.warning("cannot store the summary of %s: %s", turn.conversation_id, exc)
        return
    try:
        await publish(turn.conversation_id, {"type": "chat.summary", "summary": public(summary)})
    except layer_errors() as exc:  # stored: a reload shows it
        logger.warning("cannot announce the summary of %s: %s", turn.conversation_id, exc)


def public(summary: dict | None) -> dict | None:
    """A turn's summary (stored()) as clients get it: {"text", "until"}."""
    return {"text": summary["text"], "until": summary["until"]} if summary else None


def _save(conversation_id: str, summary: dict, covered: int, duration_ms: int) -> None:
    Summary.objects.update_or_create(
        until_id=summary["until"],
        defaults={
            "conversation_id": conversation_id,
            "text": summary["notes"],
            "said": summary["said"],
            "covered": covered,
            "duration_ms": duration_ms,
        },
    )
