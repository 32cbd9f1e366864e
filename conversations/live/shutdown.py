"""Graceful shutdown of a web process (INTERFACE.md "Shutdown"; docs/deploy.md).

Daphne runs on Twisted, whose own SIGTERM/SIGINT handler stops the reactor at
once: daphne then cancels every application instance, and the engine's thread
is still running when the interpreter exits (the crash with exit 134). So
once the reactor runs, `install()` puts our handler in its place; on the
signal it runs `stop_gracefully()` on the event loop and only then stops
the reactor:

1. new turns are refused with `busy` (Live.accepting);
2. live replies get CHAT_SHUTDOWN_GRACE seconds, the rest are stopped as
   `interrupted`; each ends through replies.finish(), so every socket gets its
   `end` and the stored text is the sent text;
3. every socket is closed (4503; the page reconnects) after the `end`s it was owed;
4. final saves still being retried get a few seconds; the engine is closed.

Inference workers have their own signal handling (conversations.live.inference_worker).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from django.conf import settings

from . import state
from .frames import layer_errors

logger = logging.getLogger(__name__)

# How long closing the sockets and the last saves may take after the replies ended.
CLOSE_SECONDS = 5.0


async def stop_gracefully() -> None:
    live = state.current()
    live.accepting = False
    grace = settings.CHAT_SHUTDOWN_GRACE
    logger.info("shutting down: %d socket(s), up to %.0f s for live replies", len(live.sockets), grace)
    await live.runner.drain(grace, live.watched)
    open_sockets = list(live.sockets)
    for socket in open_sockets:
        try:
            await socket.channel_layer.send(socket.channel_name, {"type": "chat.shutdown"})
        except layer_errors() as exc:
            logger.warning("cannot tell a socket to close: %s", exc)
    if open_sockets:
        await asyncio.wait([asyncio.create_task(s.closed.wait()) for s in open_sockets], timeout=CLOSE_SECONDS)
    await live.saves_pending(CLOSE_SECONDS)
    await asyncio.to_thread(live.close, CLOSE_SECONDS)
    logger.info("shut down")


def install() -> None:
    """Under daphne: replace Twisted's SIGTERM/SIGINT handling by a graceful stop."""
    from twisted.internet import reactor

    def on_signal(signum, frame) -> None:
        loop = reactor._asyncioEventloop
        loop.call_soon_threadsafe(_begin, signum)

    def take_over() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, on_signal)

    reactor.callWhenRunning(take_over)


_stopping: list[asyncio.Task] = []


def _begin(signum: int) -> None:
    from twisted.internet import reactor

    if _stopping:
        return  # a second signal while stopping changes nothing
    logger.info("received %s", signal.Signals(signum).name)

    async def run() -> None:
        try:
            await stop_gracefully()
        except Exception:
            logger.exception("graceful shutdown failed")
        finally:
            await _end_other_tasks()
            reactor.stop()  # type: ignore[misc]  # twisted's global reactor is typed as its module

    _stopping.append(asyncio.get_running_loop().create_task(run()))


async def _end_other_tasks() -> None:
    """Cancel the tasks still waiting (a socket's channel read, a reply's event queue) and let them end.

    Left pending when the loop stops, they are finalized during the
    interpreter's exit, where Python 3.11 can crash: closing a pending
    asyncio.Queue.get formats its future's repr after asyncio's C state is
    gone (a segmentation fault in the garbage collector, seen after SIGTERM
    under load; gdb on the core showed the repr call).
    """
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current and not task.done()]
    for task in others:
        task.cancel()
    if others:
        await asyncio.wait(others, timeout=CLOSE_SECONDS)
