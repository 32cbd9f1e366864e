"""One reply through the engine: the loop both runners (and the inference worker process) share.

Token text is gathered here (the one place on the server that coalesces it)
for COALESCE_SECONDS, written to the reply's record, and only then published,
so the record always holds at least what any socket was sent. The reply ends
through replies.finish() with the record's text, whatever happens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from threading import Event
from typing import TYPE_CHECKING

from django.conf import settings

from inference import (
    Chunk,
    EngineClosed,
    Finished,
    InferenceError,
    ModelUnavailable,
    Queued,
    QueueFull,
    Request,
    Result,
    Started,
)

from . import summaries, titles
from .frames import publish
from .replies import Ending, Turn, finish, save_partial, usage_of

if TYPE_CHECKING:
    from inference import Engine  # loads torch

logger = logging.getLogger(__name__)

# Token text is gathered for this long before a frame goes out, so a fast
# model sends a few frames a second instead of one per token.
COALESCE_SECONDS = 0.03
FAILED = "The model failed to answer; the text so far is kept."
CLOSED = "The model is not taking requests (the server is stopping); try again in a moment."
SHUTTING_DOWN = "The server is shutting down; the text so far is kept."


class Sealed(Exception):
    """The reply was ended by someone else (a reaper): nothing more of it may be recorded or published."""


class Record:
    """What was published of a reply, kept where it survives whoever might die first.

    This base keeps it in memory (local mode: the process generating is the
    one holding the sockets). conversations.live.leases keeps it in a
    Redis stream, so a dead worker's text is not lost. A continued reply's
    record starts with the text it had.
    """

    def __init__(self) -> None:
        self.text = ""

    async def append(self, text: str) -> None:
        self.text += text


@dataclass
class LiveReply:
    turn: Turn
    record: Record = field(default_factory=Record)
    cancel: Event = field(default_factory=Event)
    task: asyncio.Task | None = None
    # Set with `cancel` when the process stops: the reply then ends as
    # interrupted (the server went away), not cancelled (the user asked).
    interrupted: bool = False
    # Set as the reply's end is stored: from then on the database says whether
    # the conversation is busy, so a client that got `end` can send at once,
    # before this task has wound down.
    ending: bool = False

    def __post_init__(self) -> None:
        # A continued reply's record holds its text already (the worker's stream was seeded with it).
        self.record.text = self.turn.prefill

    @property
    def conversation_id(self) -> str:
        return self.turn.conversation_id

    @property
    def message_id(self) -> int:
        return self.turn.message_id


async def run_reply(reply: LiveReply, engine: Engine) -> None:
    """Generate one reply, publishing its frames; it always ends through replies.finish() (here, or by
    whoever sealed its record)."""
    turn = reply.turn
    ending = Ending("error", "")
    pending, flushed_at, saved_at = "", 0.0, time.monotonic()
    # What the reply has cost so far, saved with its text: a reply cut off
    # before its Finished (a stop, a crash, a SIGKILL) is still charged for it.
    spent = {"prompt_tokens": None, "completion_tokens": 0}
    sealed = False

    async def flush() -> None:
        nonlocal pending, flushed_at
        if pending:
            offset = len(reply.record.text)
            await reply.record.append(pending)
            event = {"type": "chat.token", "message_id": turn.message_id, "offset": offset, "text": pending}
            pending, flushed_at = "", time.monotonic()
            await publish(turn.conversation_id, event)

    try:
        request = Request(
            messages=await summaries.prompt(turn, engine, reply.cancel),
            params=turn.params,
            cancel=reply.cancel,
            affinity=turn.conversation_id,
            prefill=turn.prefill,
        )
        async for event in engine.stream(request):
            if isinstance(event, Chunk):
                pending += event.text
                spent["completion_tokens"] = event.generated
                now = time.monotonic()
                if now - flushed_at >= COALESCE_SECONDS:
                    await flush()
                if now - saved_at >= settings.CHAT_SAVE_INTERVAL:
                    saved_at = now
                    await save_partial(turn.message_id, reply.record.text, turn.grown(spent))
            elif isinstance(event, Queued):
                await publish(
                    turn.conversation_id,
                    {"type": "chat.queued", "message_id": turn.message_id, "position": event.position},
                )
            elif isinstance(event, Finished):
                ending = _ending(event.result, reply)
                # The chunks add up to the result's text; anything the engine
                # held back to the end goes out as one last token.
                if ending.text.startswith(reply.record.text + pending):
                    pending = ending.text[len(reply.record.text) :]
            elif isinstance(event, Started):
                logger.info("reply %s started: %d prompt tokens", turn.message_id, event.prompt_tokens)
                spent["prompt_tokens"] = event.prompt_tokens
        await flush()
    except Sealed:
        # Whoever sealed its record ends it, with the text recorded up to here (leases.Leases.reap_one,
        # WorkerRunner.drain). Ending it here as well raced them: the first end stored wins.
        logger.warning("reply %s was ended elsewhere; it stops here", turn.message_id)
        reply.cancel.set()
        sealed = True
    except QueueFull:
        ending.error = ("busy", "The server is busy with other chats; try again in a moment.")
    except EngineClosed:
        ending.error = ("model_unavailable", CLOSED)
    except ModelUnavailable as exc:
        # The endpoint went away (before or during the reply): the text so far is kept.
        ending.reason, ending.error = "error", ("model_unavailable", f"{exc} The text so far is kept.")
    except InferenceError as exc:
        ending.error = ("invalid", str(exc))
    except Exception:
        # A bug or a broken model must not leave the reply streaming forever.
        logger.exception("reply %s crashed", turn.message_id)
        ending.reason, ending.error = "error", ("generation_failed", FAILED)
    except asyncio.CancelledError:
        ending.reason = "interrupted"
        raise
    finally:
        reply.ending = True
        if not sealed:
            # Whatever was published is the text, whatever the engine said.
            ending.text = reply.record.text
            if not ending.usage and spent["prompt_tokens"] is not None:
                ending.usage = turn.grown(spent)  # no Finished: what it cost up to where it stopped
            # Shielded so a cancelled task still stores and announces its end.
            await asyncio.shield(finish(turn.conversation_id, turn.message_id, ending))
            if titles.wanted(turn, ending):  # after the `end`, which it never delays
                titles.start(turn, ending.text, engine)


def _ending(result: Result, reply: LiveReply) -> Ending:
    reason = result.finish_reason
    error = None
    if result.error:
        logger.error("reply %s failed: %s", reply.message_id, result.error)
        error = ("generation_failed", FAILED)
    if reason in ("cancelled", "error") and reply.interrupted:
        reason, error = "interrupted", ("generation_failed", SHUTTING_DOWN)
    turn = reply.turn
    return Ending(reason, turn.prefill + result.text, turn.grown(usage_of(result)), error)
