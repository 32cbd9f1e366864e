"""CHAT_INFERENCE=worker: replies run in `manage.py inference_worker` processes, over Redis.

A turn's request goes to the named channel every worker receives from, so it
reaches one worker; the reply's record, lease and stop mark are Redis keys
(conversations.live.leases), and this runner's reaper ends the replies whose
worker died.
"""

from __future__ import annotations

import asyncio
import logging

from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings

from ...models import Message
from ..frames import layer_errors
from ..leases import Leases
from ..replies import RESTARTING, Ending, Refused, Turn, finish
from . import Runner

logger = logging.getLogger(__name__)

# The named channel every worker receives from: one request reaches one worker.
REQUESTS_CHANNEL = "inference.requests"
UNREACHABLE = "The inference service is unreachable; try again in a moment."


def control_group(conversation_id) -> str:
    """The group a worker joins while it holds a reply of the conversation: stop goes there."""
    return f"chat-control.{conversation_id}"


class WorkerRunner(Runner):
    def __init__(self, models) -> None:
        super().__init__(models)  # the workers generate; this process only lists the models
        self.leases = Leases()
        self.reapers: dict[int, asyncio.Task] = {}

    def ensure_reaper(self) -> None:
        """Run the reaper on the current event loop (once per loop)."""
        loop = asyncio.get_running_loop()
        task = self.reapers.get(id(loop))
        if task is None or task.done():
            self.reapers[id(loop)] = loop.create_task(self.leases.reap_forever())

    async def start(self, turn: Turn) -> None:
        self.ensure_reaper()
        request = {
            "type": "generate",
            "conversation_id": turn.conversation_id,
            "message_id": turn.message_id,
            "model": turn.model,
            "history": turn.history,
            "params": turn.params.to_dict(),
            "prefill": turn.prefill,
            "before": turn.before,
            "title": turn.title,  # set on a chat's first turn: the worker then asks for the model's title
            "path": turn.path,
            "summary": turn.summary,
        }
        try:
            await self.leases.hand_over(turn.message_id, turn.prefill)
            await get_channel_layer().send(REQUESTS_CHANNEL, request)
        except ChannelFull:
            raise Refused("busy", "The server is busy with other chats; try again in a moment.") from None
        except layer_errors() as exc:
            logger.warning("cannot hand reply %s to the workers: %s", turn.message_id, exc)
            raise Refused("generation_failed", UNREACHABLE) from None

    async def stop(self, conversation_id: str, interrupted: bool = False) -> bool:
        message_id = await _streaming_message_id(conversation_id)
        if message_id is None:
            return False
        # Marked before it is sent: a worker not yet in the control group reads the mark once it joins.
        await self.leases.mark_stop(message_id, interrupted)
        event = {"type": "reply.stop", "conversation_id": conversation_id, "interrupted": interrupted}
        await get_channel_layer().group_send(control_group(conversation_id), event)
        return True

    async def snapshot(self, conversation_id: str) -> tuple[int, str] | None:
        self.ensure_reaper()
        message_id = await _streaming_message_id(conversation_id)
        if message_id is None:
            return None
        _, text = await self.leases.read_stream(message_id)
        return message_id, text

    def watch(self, conversation_id: str) -> None:
        self.ensure_reaper()

    async def drain(self, grace: float, watched) -> None:
        """A web process stopping: replies run in workers; the ones its sockets watch get the grace."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while watched() and loop.time() < deadline:
            await asyncio.sleep(0.1)  # the replies end in other processes; their `end` empties the set
        left = watched()
        for conversation_id, _ in left:
            await self.stop(conversation_id, interrupted=True)
        deadline = loop.time() + settings.CHAT_WORKER_TIMEOUT
        while watched() and loop.time() < deadline:
            await asyncio.sleep(0.1)
        # Workers that did not answer: end those replies here with what was published.
        for conversation_id, message_id in watched():
            _, text = await self.leases.seal(message_id)
            error = ("generation_failed", RESTARTING)
            await finish(conversation_id, message_id, Ending("interrupted", text, error=error))


@database_sync_to_async
def _streaming_message_id(conversation_id) -> int | None:
    return (
        Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING)
        .values_list("id", flat=True)
        .last()
    )
