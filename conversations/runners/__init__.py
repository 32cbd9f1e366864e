"""Where replies are generated: a backend chosen by CHAT_INFERENCE (see conversations.turns.RUNNERS).

- `local.LocalRunner`: in this process, on its engine (the embedded default).
- `worker.WorkerRunner`: in `manage.py inference_worker` processes, over Redis;
  it also reaps replies whose worker died.

Both take a turns.Turn and end every reply through turns.finish().
"""

from __future__ import annotations

from collections.abc import Callable


class Runner:
    """What conversations.turns and the chat socket need; each backend implements it."""

    def in_progress(self, conversation_id: str) -> bool:
        """Whether this process knows of a live reply (checked with the database's own)."""
        return False

    async def start(self, turn) -> None:
        """Start generating the turn's reply; returns at once. Raises turns.Refused."""
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
