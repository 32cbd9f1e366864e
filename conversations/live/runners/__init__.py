"""Where replies are generated: a backend chosen by CHAT_INFERENCE, as SESSION_ENGINE chooses a session store.

- `local.LocalRunner`: in this process, on its engine (the embedded default).
- `worker.WorkerRunner`: in `manage.py inference_worker` processes, over Redis
  (conversations.live.leases keeps each handed-over reply's record and lease).

Both take a replies.Turn and end every reply through replies.finish(). The
registry imports a backend by name only when it is built, so a site on the
local runner never imports redis.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from django.utils.module_loading import import_string

if TYPE_CHECKING:
    from ...endpoints.registry import Registry
    from ..replies import Turn

RUNNERS = {
    "local": "conversations.live.runners.local.LocalRunner",
    "worker": "conversations.live.runners.worker.WorkerRunner",
    # No local model: the endpoints' turns run in this process, as local ones do.
    "none": "conversations.live.runners.local.LocalRunner",
}


class Runner:
    """What the turn and the chat socket need; each backend implements it."""

    def __init__(self, models: Registry) -> None:
        self.models = models

    def in_progress(self, conversation_id: str) -> bool:
        """Whether this process knows of a live reply (checked with the database's own)."""
        return False

    async def start(self, turn: Turn) -> None:
        """Start generating the turn's reply; returns at once. Raises replies.Refused."""
        raise NotImplementedError

    async def stop(self, conversation_id: str, interrupted: bool = False) -> bool:
        """Ask the live reply to stop (as `cancelled`, or `interrupted` on shutdown); False if none."""
        raise NotImplementedError

    async def snapshot(self, conversation_id: str) -> tuple[int, str] | None:
        """The live reply's id and the text published so far, or None."""
        raise NotImplementedError

    def watch(self, conversation_id: str) -> None:
        """A socket opened on the conversation."""

    def unwatch(self, conversation_id: str) -> None:
        """A socket closed."""

    async def drain(self, grace: float, watched: Callable[[], set[tuple[str, int]]]) -> None:
        """Shutdown: let live replies run up to `grace` seconds, then stop the rest as interrupted.

        `watched` gives the (conversation, reply) pairs this process's sockets
        are following; returns when every reply they watch has ended.
        """
        raise NotImplementedError


def build(mode: str, models: Registry) -> Runner:
    """The runner of CHAT_INFERENCE=`mode`, generating with `models`."""
    runner_class: type[Runner] = import_string(RUNNERS[mode])
    return runner_class(models)
