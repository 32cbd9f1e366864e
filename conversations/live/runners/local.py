"""CHAT_INFERENCE=local (and none): replies run as tasks of this process, on its engine or its endpoints."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from django.conf import settings

from ..generation import LiveReply, run_reply
from ..replies import Refused, Turn
from . import Runner

if TYPE_CHECKING:
    from ...endpoints.registry import Registry

logger = logging.getLogger(__name__)
# After the grace, how long stopped replies get to store their end.
CUT_OFF_SECONDS = 15.0
NOT_LOADED = "The model is not loaded yet; try again in a moment."


class LocalRunner(Runner):
    """The live replies of this process, and how many sockets watch each conversation."""

    def __init__(self, models: Registry) -> None:
        super().__init__(models)
        self.replies: dict[str, LiveReply] = {}
        self.watchers: dict[str, int] = {}

    def get(self, conversation_id) -> LiveReply | None:
        return self.replies.get(str(conversation_id))

    def in_progress(self, conversation_id: str) -> bool:
        reply = self.get(conversation_id)
        return reply is not None and not reply.ending

    async def start(self, turn: Turn) -> None:
        if turn.model == self.models.local_model and self.models.local_engine is None:
            raise Refused("generation_failed", NOT_LOADED)
        reply = LiveReply(turn)
        key = turn.conversation_id
        self.replies[key] = reply
        reply.task = asyncio.create_task(run_reply(reply, self.models.engine(turn.model)))
        reply.task.add_done_callback(lambda task: self._forget(key, reply))

    def _forget(self, key: str, reply: LiveReply) -> None:
        if self.replies.get(key) is reply:
            del self.replies[key]

    async def stop(self, conversation_id: str, interrupted: bool = False) -> bool:
        reply = self.get(conversation_id)
        if reply is None:
            return False
        reply.interrupted = reply.interrupted or interrupted
        reply.cancel.set()
        return True

    async def snapshot(self, conversation_id: str) -> tuple[int, str] | None:
        reply = self.get(conversation_id)
        # An ending reply is not live: its `end` is published (or about to be) before its task is done, and a
        # socket that joined after that `end` must not get a `start` that no `end` follows. One that joined
        # before it gets the `end` anyway, and with it the text (consumers.chat_end).
        if reply is None or reply.ending:
            return None
        return reply.message_id, reply.record.text

    def watch(self, conversation_id: str) -> None:
        self.watchers[conversation_id] = self.watchers.get(conversation_id, 0) + 1

    def unwatch(self, conversation_id: str) -> None:
        """One socket fewer. When nobody is left, the reply gets a grace period
        (a reload or a reconnect comes back within it) and is then stopped, so
        an abandoned reply does not hold the model."""
        self.watchers[conversation_id] = max(self.watchers.get(conversation_id, 1) - 1, 0)
        if self.watchers[conversation_id] == 0:
            del self.watchers[conversation_id]
            if conversation_id in self.replies:
                loop = asyncio.get_running_loop()
                loop.call_later(settings.CHAT_ORPHAN_GRACE, self._stop_if_unwatched, conversation_id)

    def _stop_if_unwatched(self, key: str) -> None:
        reply = self.get(key)
        if not self.watchers.get(key) and reply is not None:
            reply.cancel.set()
            logger.info("reply in %s stopped: nobody watched it for %.0f s", key, settings.CHAT_ORPHAN_GRACE)

    async def drain(self, grace: float, watched) -> None:
        tasks = [reply.task for reply in self.replies.values() if reply.task]
        if not tasks:
            return
        logger.info("waiting up to %.0f s for %d reply(s)", grace, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=grace)
        if not pending:
            return
        logger.warning("stopping %d reply(s) as interrupted", len(pending))
        for reply in list(self.replies.values()):
            await self.stop(reply.conversation_id, interrupted=True)
        await asyncio.wait(pending, timeout=CUT_OFF_SECONDS)
