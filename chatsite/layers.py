"""The Redis channel layer: channels_redis, with one reader per Redis key for this process's channels.

Every consumer of a process has its own channel (`specific.<process>!<id>`),
and channels_redis keeps them all in one Redis key, read with BZPOPMIN by
whichever receive() comes first. A consumer that goes away (a closed tab, a
reply a worker has finished) cancels its receive(). When that receive was
the one reading, its BZPOPMIN still pops on the server and the message,
meant for another consumer of the process, is dropped (channels_redis#366):
a tab would miss a reply's `end`. Here one task per key reads for everybody
and is never cancelled by a consumer; a receive() only waits on its own
channel's inbox, so cancelling it loses nothing meant for anyone else.
"""

from __future__ import annotations

import asyncio
import functools
from collections import defaultdict

from channels_redis.core import BoundedQueue
from channels_redis.core import RedisChannelLayer as ChannelsRedisLayer


class RedisChannelLayer(ChannelsRedisLayer):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # Messages read for each channel of this process, until it receives them: created on
        # arrival, dropped when emptied, and bounded (the oldest go first), as channels_redis's buffers are.
        self.inboxes: defaultdict[str, asyncio.Queue] = defaultdict(functools.partial(BoundedQueue, self.capacity))
        self.readers: dict[str, asyncio.Task] = {}  # by Redis key: the task reading it

    async def receive(self, channel: str) -> dict:
        if "!" not in channel:
            return await super().receive(channel)  # a named channel: one BZPOPMIN per call, as before
        assert self.require_valid_channel_name(channel)
        reader = self._reader(self.non_local_name(channel))
        inbox = self.inboxes[channel]
        waiting = asyncio.ensure_future(inbox.get())
        try:
            await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            waiting.cancel()
            self.inboxes.pop(channel, None)  # its consumer is gone
            raise
        if not waiting.done():
            waiting.cancel()
            reader.result()  # the reader's error (Redis unreachable, say); the next receive starts another
            raise RuntimeError(f"the reader of {channel} stopped")
        if inbox.empty() and self.inboxes.get(channel) is inbox:
            del self.inboxes[channel]
        return waiting.result()

    def _reader(self, real_channel: str) -> asyncio.Task:
        """The task reading `real_channel` on this event loop (started, or started again, as needed)."""
        reader = self.readers.get(real_channel)
        if reader is None or reader.done() or reader.get_loop() is not asyncio.get_running_loop():
            reader = self.readers[real_channel] = asyncio.ensure_future(self._read(real_channel))
            reader.add_done_callback(_seen)
        return reader

    async def _read(self, real_channel: str) -> None:
        while True:
            destination, message = await self.receive_single(real_channel)
            for channel in destination if isinstance(destination, list) else [destination]:
                self.inboxes[channel].put_nowait(message)


def _seen(reader: asyncio.Task) -> None:
    """A reader's error goes to whoever waits on it; with nobody waiting (its loop is ending) it is no news."""
    if not reader.cancelled():
        reader.exception()
