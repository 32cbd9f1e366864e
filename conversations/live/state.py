"""This process's live state, in one object: the one owner of it.

A `Live` holds the runner (and through it the models this process serves:
the local engine and the endpoints, conversations.endpoints.registry), the open
chat sockets, whether new turns are accepted, and the final saves still being
retried. It is built once, at start-up, by conversations.live.process (a web
process in chatsite.asgi, a command with `process.ready()`) and installed
here; tests swap it whole (`swapped`). This module imports nothing of the
live turn, so every module of it can read the state without calling up.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from inference import Engine

    from ..endpoints.registry import Registry
    from .runners import Runner


@dataclass(eq=False)
class Live:
    """What this process has going: built once, swapped whole by tests."""

    runner: Runner
    # The chat sockets of this process (each ChatConsumer adds and removes itself).
    sockets: set[Any] = field(default_factory=set)
    # Cleared on SIGTERM: new turns are refused with `busy` (conversations.live.shutdown).
    accepting: bool = True
    # Final saves being retried in the background (conversations.live.replies).
    saves: set[asyncio.Task] = field(default_factory=set)
    # Work nobody waits on, such as a chat's title (conversations.live.titles).
    background: set[asyncio.Task] = field(default_factory=set)

    @property
    def models(self) -> Registry:
        """The models this process serves: the local one and the endpoints'."""
        return self.runner.models

    @property
    def engine(self) -> Engine | None:
        """The local model's engine, where this process has one (local mode)."""
        return self.runner.models.local_engine

    def watched(self) -> set[tuple[str, int]]:
        """The (conversation, reply) pairs this process's sockets are following."""
        pairs: set[tuple[str, int]] = set()
        for socket in list(self.sockets):
            pairs |= socket.watching()
        return pairs

    def open_temporary_chats(self) -> set[str]:
        """The temporary chats this process's sockets have open (read by the sweep's thread too)."""
        return {socket.key for socket in list(self.sockets) if socket.conversation.temporary}

    def keep(self, task: asyncio.Task) -> None:
        """Hold on to a background save until it is done."""
        self.saves.add(task)
        task.add_done_callback(self.saves.discard)

    def run_in_background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task:
        """Run `work` as a task held here until it is done (a task nobody holds may be collected)."""
        task = asyncio.get_running_loop().create_task(work)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    async def saves_pending(self, timeout: float) -> None:
        """Wait (up to `timeout`) for final saves still being retried; shutdown calls it."""
        if self.saves:
            await asyncio.wait(set(self.saves), timeout=timeout)

    def close(self, timeout: float) -> None:
        """Close the engine if there is one: its jobs end, its scheduler thread is joined."""
        if self.engine is not None:
            self.engine.close(timeout=timeout)


_lock = threading.Lock()
_current: Live | None = None


class NotStarted(RuntimeError):
    """Nothing built this process's live state (chatsite.asgi, or process.ready() in a command, does)."""


def current() -> Live:
    """This process's live state. Raises NotStarted before start-up built it."""
    with _lock:
        if _current is None:
            raise NotStarted("this process has no live state: chatsite.asgi or process.ready() builds it")
        return _current


def install(live: Live | None) -> Live | None:
    """Make `live` this process's state; returns the one it replaces."""
    global _current
    with _lock:
        previous, _current = _current, live
    return previous


@contextmanager
def swapped(live: Live) -> Iterator[Live]:
    """`live` as this process's state inside the block (tests)."""
    previous = install(live)
    try:
        yield live
    finally:
        install(previous)
