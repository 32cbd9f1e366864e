"""Who generates a reply for a consumer: this process, or the inference workers.

CHAT_INFERENCE picks the dispatcher (like SESSION_ENGINE picks a session
backend): `local` runs replies in this process (conversations.replies);
`worker` hands them to `manage.py inference_worker` processes over the
channel layer (Redis). Either way the reply's frames reach consumers as the
same group events, so ChatConsumer does not care which one it has.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from redis.exceptions import RedisError

from inference import GenerationParams

from . import runtime
from .models import Message
from .replies import replies

logger = logging.getLogger(__name__)

# The named channel every worker receives from: one request reaches one worker.
REQUESTS_CHANNEL = "inference.requests"

# What the channel layer raises when Redis is unreachable or a channel full.
LAYER_ERRORS = (RedisError, OSError, asyncio.TimeoutError, ChannelFull)


def control_group(conversation_id) -> str:
    """The group a worker joins while it holds a reply of the conversation: stop and sync go there."""
    return f"chat-control.{conversation_id}"


class DispatchError(Exception):
    """The request could not be handed over; `code` and `message` go into the error frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Dispatcher:
    """What a consumer needs to get replies generated; child classes implement each method."""

    # True when replies run elsewhere, so consumers must watch for silence.
    supervised = False

    def in_progress(self, conversation_id) -> bool:
        """Whether this process knows of a live reply (checked with the database's own)."""
        raise NotImplementedError

    async def start(self, conversation_id, message_id: int, history: list[dict], params: GenerationParams) -> None:
        """Start generating; returns at once. Raises DispatchError."""
        raise NotImplementedError

    async def stop(self, conversation_id) -> bool:
        """Ask the live reply to stop; False when there is none."""
        raise NotImplementedError

    async def sync(self, conversation_id, reply_to: str) -> int | None:
        """Ask for the live reply's text so far as a `chat.snapshot` event sent to
        channel `reply_to`; returns the reply's message id, None if there is none."""
        raise NotImplementedError

    def watch(self, conversation_id) -> None:
        """A socket opened on the conversation."""

    def unwatch(self, conversation_id) -> None:
        """A socket closed."""


class LocalDispatcher(Dispatcher):
    """Replies run in this process (the embedded default): no Redis involved."""

    def in_progress(self, conversation_id) -> bool:
        return replies.get(conversation_id) is not None

    async def start(self, conversation_id, message_id, history, params) -> None:
        replies.start(conversation_id, message_id, history, params, runtime.get_engine())

    async def stop(self, conversation_id) -> bool:
        return replies.stop(conversation_id)

    async def sync(self, conversation_id, reply_to: str) -> int | None:
        live = replies.get(conversation_id)
        if live is None:
            return None
        await get_channel_layer().send(
            reply_to, {"type": "chat.snapshot", "message_id": live.message_id, "text": live.text}
        )
        return live.message_id

    def watch(self, conversation_id) -> None:
        replies.watch(conversation_id)

    def unwatch(self, conversation_id) -> None:
        replies.unwatch(conversation_id)


class WorkerDispatcher(Dispatcher):
    """Replies run in inference workers; requests and control messages go over the channel layer.

    The reply's state lives in the database (PostgreSQL, shared by every
    process): a `streaming` message is a live reply somewhere. A reply
    nobody watches runs to its end (the grace stop of local mode is not
    done across processes).
    """

    supervised = True

    def in_progress(self, conversation_id) -> bool:
        return False  # nothing runs here; the database check covers every process

    async def start(self, conversation_id, message_id, history, params) -> None:
        request = {
            "type": "generate",
            "conversation_id": str(conversation_id),
            "message_id": message_id,
            "history": history,
            "params": params.to_dict(),
        }
        try:
            await get_channel_layer().send(REQUESTS_CHANNEL, request)
        except ChannelFull:
            raise DispatchError("busy", "The server is busy with other chats; try again in a moment.") from None
        except LAYER_ERRORS as exc:
            logger.warning("cannot hand reply %s to the workers: %s", message_id, exc)
            raise DispatchError(
                "generation_failed", "The inference service is unreachable; try again in a moment."
            ) from None

    async def stop(self, conversation_id) -> bool:
        if await _streaming_message_id(conversation_id) is None:
            return False
        await get_channel_layer().group_send(
            control_group(conversation_id), {"type": "reply.stop", "conversation_id": str(conversation_id)}
        )
        return True

    async def sync(self, conversation_id, reply_to: str) -> int | None:
        message_id = await _streaming_message_id(conversation_id)
        if message_id is not None:
            await get_channel_layer().group_send(
                control_group(conversation_id),
                {"type": "reply.sync", "conversation_id": str(conversation_id), "reply_to": reply_to},
            )
        return message_id


@database_sync_to_async
def _streaming_message_id(conversation_id) -> int | None:
    return (
        Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING)
        .values_list("id", flat=True)
        .last()
    )


def get_dispatcher() -> Dispatcher:
    """The dispatcher CHAT_INFERENCE names (read each time, so tests can switch)."""
    return WorkerDispatcher() if settings.CHAT_INFERENCE == "worker" else LocalDispatcher()
