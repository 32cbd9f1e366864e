"""Live replies: the one place that knows which replies are being generated.

A reply is an asyncio task that feeds a stored transcript to the engine and
publishes what happens to the conversation's Channels group, where every
open tab's consumer forwards it to its browser. The task belongs to this
module, not to a consumer, so a reply outlives the socket that asked for it:
a reload, a second tab or a reconnect picks it up where it is.

Group events (handled by ChatConsumer methods of the same name):
  chat.message  {"message": {...}}                      a stored user message
  chat.start    {"message_id", "replaces"}              a reply began
  chat.queued   {"message_id", "position"}              waiting for the model
  chat.token    {"message_id", "offset", "text"}        offset = characters before `text`
  chat.end      {"message_id", "finish_reason", "status", "usage", "timing"}
  chat.error    {"code", "message"}

In worker mode (conversations.worker) the same run_reply runs in an inference
worker and these events reach the web processes over Redis; the worker adds
  chat.accepted {"message_id"}                          a worker took the request
  chat.alive    {"message_id"}                          heartbeat while it holds it
and answers a consumer's sync with chat.snapshot {"message_id", "text"} sent
to that consumer's own channel.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from threading import Event
from typing import Awaitable, Callable

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.conf import settings

from inference import Chunk, Finished, GenerationParams, InferenceError, Queued, QueueFull, Request, Started

from .models import Message

logger = logging.getLogger(__name__)

# Token text is gathered for this long before a frame goes out, so a fast
# model sends a few frames a second instead of one per token.
COALESCE_SECONDS = 0.03

Publish = Callable[[dict], Awaitable[None]]


def group_name(conversation_id) -> str:
    return f"chat.{conversation_id}"


def group_publisher(conversation_id) -> Publish:
    """Publish to the conversation's group; a channel layer that is down loses the event.

    Losing a frame is better than losing the reply: generation goes on and
    the text keeps being saved, and the web processes notice the silence
    (their watchdog) and read the stored state.
    """
    from .dispatch import LAYER_ERRORS

    layer = get_channel_layer()
    group = group_name(conversation_id)

    async def publish(event: dict) -> None:
        try:
            await layer.group_send(group, event)
        except LAYER_ERRORS as exc:
            logger.warning("cannot publish %s to %s: %s", event["type"], group, exc)

    return publish


@dataclass
class LiveReply:
    conversation_id: str
    message_id: int
    cancel: Event = field(default_factory=Event)
    text: str = ""
    task: asyncio.Task | None = None
    # Set with `cancel` when the process stops: the reply then ends as
    # interrupted (the server went away), not cancelled (the user asked).
    interrupted: bool = False


@database_sync_to_async
def _save_partial(message_id: int, text: str) -> None:
    Message.objects.filter(id=message_id, status=Message.Status.STREAMING).update(content=text)


@database_sync_to_async
def _save_final(message_id: int, reason: str, text: str, usage: dict) -> None:
    message = Message.objects.get(id=message_id)
    message.finish(reason, text, usage)


async def run_reply(reply: LiveReply, engine, history: list[dict], params: GenerationParams, publish: Publish) -> None:
    """Generate one reply, publishing frames and saving the text as it grows.

    Ends with the message stored in a final state, whatever happens: the
    engine's own errors become `error`, a cancelled task `cancelled`.
    """
    request = Request(messages=history, params=params, cancel=reply.cancel)
    pending, flushed_at, saved_at = "", 0.0, time.monotonic()
    reason, usage, timing = "error", {}, {}

    async def flush() -> None:
        nonlocal pending, flushed_at
        if pending:
            offset = len(reply.text) - len(pending)
            await publish({"type": "chat.token", "message_id": reply.message_id, "offset": offset, "text": pending})
            pending, flushed_at = "", time.monotonic()

    try:
        async for event in engine.stream(request):
            if isinstance(event, Chunk):
                reply.text += event.text
                pending += event.text
                now = time.monotonic()
                if now - flushed_at >= COALESCE_SECONDS:
                    await flush()
                if now - saved_at >= settings.CHAT_SAVE_INTERVAL:
                    saved_at = now
                    await _save_partial(reply.message_id, reply.text)
            elif isinstance(event, Queued):
                await publish({"type": "chat.queued", "message_id": reply.message_id, "position": event.position})
            elif isinstance(event, Finished):
                result = event.result
                reason = result.finish_reason
                reply.text = result.text
                usage = {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens}
                timing = {
                    "ttft_ms": result.ttft_ms,
                    "duration_ms": result.duration_ms,
                    "tokens_per_s": round(result.tokens_per_s, 1),
                }
                if result.error:
                    logger.error("reply %s failed: %s", reply.message_id, result.error)
            elif isinstance(event, Started):
                logger.info(
                    "reply %s started: %d prompt tokens, %d turns dropped",
                    reply.message_id,
                    event.prompt_tokens,
                    event.dropped_turns,
                )
        await flush()
        if reason == "cancelled" and reply.interrupted:
            reason = "interrupted"
            await publish(
                {
                    "type": "chat.error",
                    "code": "generation_failed",
                    "message": "The inference worker is shutting down; the text so far is kept.",
                }
            )
    except QueueFull:
        await publish(
            {
                "type": "chat.error",
                "code": "busy",
                "message": "The server is busy with other chats; try again in a moment.",
            }
        )
    except InferenceError as exc:
        await publish({"type": "chat.error", "code": "invalid", "message": str(exc)})
    except Exception:
        # A bug or a broken model must not leave the reply streaming forever.
        logger.exception("reply %s crashed", reply.message_id)
        await publish(
            {
                "type": "chat.error",
                "code": "generation_failed",
                "message": "The model failed to answer; the text so far is kept.",
            }
        )
    except asyncio.CancelledError:
        reason = "cancelled"
        raise
    finally:
        # Shielded so a cancelled task still leaves the database consistent.
        await asyncio.shield(_finish(reply, reason, usage, timing, publish))


async def _finish(reply: LiveReply, reason: str, usage: dict, timing: dict, publish: Publish) -> None:
    await _save_final(
        reply.message_id,
        reason,
        reply.text,
        dict(usage, ttft_ms=timing.get("ttft_ms"), duration_ms=timing.get("duration_ms")),
    )
    await publish(
        {
            "type": "chat.end",
            "message_id": reply.message_id,
            "finish_reason": reason,
            "status": Message.STATUS_FOR_REASON[reason],
            "usage": usage,
            "timing": timing,
        }
    )
    logger.info("reply %s ended: %s, %s tokens", reply.message_id, reason, usage.get("completion_tokens"))


class ReplyManager:
    """The live replies of this process, and who is watching them."""

    def __init__(self) -> None:
        self.replies: dict[str, LiveReply] = {}
        self.watchers: dict[str, int] = {}

    def get(self, conversation_id) -> LiveReply | None:
        return self.replies.get(str(conversation_id))

    def start(
        self, conversation_id, message_id: int, history: list[dict], params: GenerationParams, engine
    ) -> LiveReply:
        """Start generating a reply as a task of this module; returns at once."""
        key = str(conversation_id)
        reply = LiveReply(conversation_id=key, message_id=message_id)
        self.replies[key] = reply
        publish = group_publisher(key)
        reply.task = asyncio.create_task(run_reply(reply, engine, history, params, publish))
        reply.task.add_done_callback(lambda task: self._forget(key, reply))
        return reply

    def _forget(self, key: str, reply: LiveReply) -> None:
        if self.replies.get(key) is reply:
            del self.replies[key]

    def stop(self, conversation_id) -> bool:
        """Ask the live reply to stop; it ends as `cancelled` with its text so far."""
        reply = self.get(conversation_id)
        if reply is None:
            return False
        reply.cancel.set()
        return True

    def watch(self, conversation_id) -> None:
        key = str(conversation_id)
        self.watchers[key] = self.watchers.get(key, 0) + 1

    def unwatch(self, conversation_id) -> None:
        """One socket fewer. When nobody is left, the reply gets a grace period
        (a reload or a reconnect comes back within it) and is then stopped, so
        an abandoned reply does not hold the model."""
        key = str(conversation_id)
        self.watchers[key] = max(self.watchers.get(key, 1) - 1, 0)
        if self.watchers[key] == 0:
            del self.watchers[key]
            if key in self.replies:
                asyncio.get_running_loop().call_later(settings.CHAT_ORPHAN_GRACE, self._stop_if_unwatched, key)

    def _stop_if_unwatched(self, key: str) -> None:
        if not self.watchers.get(key) and self.stop(key):
            logger.info("reply in %s stopped: nobody watched it for %.0f s", key, settings.CHAT_ORPHAN_GRACE)


replies = ReplyManager()
