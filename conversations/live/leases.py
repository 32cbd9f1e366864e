"""The Redis side of a reply handed to an inference worker (CHAT_INFERENCE=worker).

Each such reply has three Redis keys next to the channel layer's (same prefix):

- `<prefix>:reply:<id>:text`, a Redis Stream: one entry per flushed chunk,
  written by the worker *before* it publishes the chunk (plus an empty entry
  when it accepts the request). It is the durable record of what sockets were
  sent: a socket that (re)connects reads the text so far from it, and a reply
  whose worker died is stored with the stream's text.
- `<prefix>:reply:<id>:lease`, a key that expires after CHAT_WORKER_TIMEOUT:
  set by the web process when it hands the request over (so a request no
  worker takes in time is given up) and renewed by the worker holding it.
- `<prefix>:reply:<id>:stop`, the stop mark (docs/architecture.md, "A stop
  is never lost").
- `<prefix>:reply:<id>:sealed`, set by whoever ends a reply in the worker's
  stead (a reaper, a web process's shutdown) before it reads the stream: from
  then on the worker's appends fail (a Lua script checks the seal and adds in
  one step), so it publishes nothing more. Without it, a worker that was slow,
  not dead, could publish a token after the reaper read the stream and before
  its `end` went out: a socket was sent text the stored reply lacked (the
  `make soak` failure of issue 29).

The reaper runs in every web process and every worker: every
CHAT_WORKER_TIMEOUT / 4 seconds it ends the replies still `streaming` whose
lease has expired, through replies.finish(), so nothing stays `streaming` for
more than about CHAT_WORKER_TIMEOUT after its worker died, watched or not.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import cast

import redis.asyncio
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from ..models import InferenceWorker, Message
from .frames import layer_errors
from .generation import Record, Sealed
from .replies import Ending, finish

logger = logging.getLogger(__name__)

# A finished reply's stream is kept this long (a socket reconnecting late still reads it).
STREAM_TTL_SECONDS = 60
# A stream of a reply nobody finished is dropped after a day whatever happens.
LIVE_STREAM_TTL_SECONDS = 86_400
STOPPED_ANSWERING = "The inference worker stopped answering; the text so far is kept."
ALL_BUSY = "Every inference worker is busy; try again in a moment."
NO_WORKER = "No inference worker is running; try again later."


def _prefix() -> str:
    return settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")


def stream_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:text"


def lease_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:lease"


def stop_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:stop"


def sealed_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:sealed"


# Adds an entry to the reply's stream (KEYS[1]) unless it is sealed (KEYS[2]); 1 if added, 0 if sealed.
APPEND_UNLESS_SEALED = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('XADD', KEYS[1], '*', 't', ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""


def lease_ms() -> int:
    return int(settings.CHAT_WORKER_TIMEOUT * 1000)


class Leases:
    """The keys of handed-over replies, read and written through one Redis client per event loop.

    A web process's WorkerRunner and an inference worker each own one.
    """

    def __init__(self) -> None:
        self._clients: dict[int, redis.asyncio.Redis] = {}

    def client(self) -> redis.asyncio.Redis:
        """A Redis client for the running event loop (tests run one loop per test)."""
        loop = id(asyncio.get_running_loop())
        if loop not in self._clients:
            self._clients[loop] = redis.asyncio.Redis.from_url(
                settings.REDIS_URL, socket_timeout=15, socket_connect_timeout=3, decode_responses=True
            )
        return self._clients[loop]

    def record(self, message_id: int) -> StreamRecord:
        return StreamRecord(self.client(), message_id)

    async def read_stream(self, message_id: int) -> tuple[bool, str]:
        """Whether a worker accepted the reply, and its text (a continued reply's earlier text included)."""
        # The client decodes (decode_responses), so every id and field is a str.
        entries = cast(list[tuple[str, dict[str, str]]], await self.client().xrange(stream_key(message_id)))
        accepted = any("before" not in fields for _, fields in entries)
        return accepted, "".join(fields["t"] for _, fields in entries)

    async def hand_over(self, message_id: int, before: str = "") -> None:
        """The reply's request is about to go to the workers: it is given up if none takes it in time.

        A continued reply's last turn may have left its stream and seal (they
        linger a minute): they go, and the new stream starts with the text the
        reply had, `before`, so whoever ends it keeps that text.
        """
        client = self.client()
        await client.delete(stream_key(message_id), sealed_key(message_id))
        if before:
            await client.xadd(stream_key(message_id), {"t": before, "before": "1"})
            await client.expire(stream_key(message_id), LIVE_STREAM_TTL_SECONDS)
        await client.set(lease_key(message_id), "queued", px=lease_ms())

    async def renew(self, message_ids) -> None:
        """The holder of these replies is alive (a worker's heartbeat)."""
        async with self.client().pipeline(transaction=False) as pipe:
            for message_id in message_ids:
                pipe.set(lease_key(message_id), "held", px=lease_ms())
            await pipe.execute()

    async def mark_stop(self, message_id: int, interrupted: bool) -> None:
        """Leave the stop where the worker that takes (or took) the reply reads it; `interrupted` wins."""
        value = "interrupted" if interrupted else "cancelled"
        await self.client().set(stop_key(message_id), value, ex=LIVE_STREAM_TTL_SECONDS, nx=not interrupted)

    async def stop_marked(self, message_id: int) -> str | None:
        """The reply's stop mark ("cancelled" or "interrupted"), or None when nobody asked it to stop."""
        return cast(str | None, await self.client().get(stop_key(message_id)))

    async def seal(self, message_id: int) -> tuple[bool, str]:
        """End the reply's stream for its worker, then read it: (whether a worker accepted it, its final text).

        Redis runs commands in order: an append before the seal is in the text
        read after it, and every append after it fails, so nothing published
        of the reply is missing from what is returned.
        """
        await self.client().set(sealed_key(message_id), "1", ex=LIVE_STREAM_TTL_SECONDS)
        return await self.read_stream(message_id)

    async def forget(self, message_id: int) -> None:
        """A reply ended: no lease or stop mark any more; its stream (and seal) linger a minute for late comers."""
        await self.client().delete(lease_key(message_id), stop_key(message_id))
        await self.client().expire(stream_key(message_id), STREAM_TTL_SECONDS)
        await self.client().expire(sealed_key(message_id), STREAM_TTL_SECONDS)

    async def reap_forever(self) -> None:
        while True:
            await asyncio.sleep(settings.CHAT_WORKER_TIMEOUT / 4)
            try:
                await self.reap()
            except (DatabaseError, *layer_errors()) as exc:
                logger.warning("reaper: %s", exc)
            except Exception:
                # One bad reply must not end the loop: a dead reaper leaves every
                # later reply of a dead worker streaming for good.
                logger.exception("reaper: an unexpected error; it goes on")

    async def reap(self) -> int:
        """End the streaming replies whose lease expired; returns how many this process ended."""
        rows = await _streaming_before(settings.CHAT_WORKER_TIMEOUT)
        if not rows:
            return 0
        leases = await self.client().mget([lease_key(message_id) for message_id, _ in rows])
        ended = 0
        for (message_id, conversation_id), lease in zip(rows, leases, strict=True):
            if lease is None and await self.reap_one(str(conversation_id), message_id):
                ended += 1
        return ended

    async def reap_one(self, conversation_id: str, message_id: int) -> bool:
        accepted, text = await self.seal(message_id)
        if accepted:
            ending = Ending("interrupted", text, error=("generation_failed", STOPPED_ANSWERING))
        elif await _workers_alive():
            ending = Ending("error", text, error=("busy", ALL_BUSY))
        else:
            ending = Ending("error", text, error=("generation_failed", NO_WORKER))
        if not await finish(conversation_id, message_id, ending):
            return False
        logger.warning("reply %s: its lease expired, ended as %s", message_id, ending.reason)
        await self.forget(message_id)
        return True


class StreamRecord(Record):
    """The reply's text in its Redis stream, appended before each chunk is published; refused once sealed."""

    def __init__(self, client: redis.asyncio.Redis, message_id: int) -> None:
        super().__init__()
        self.client = client
        self.keys = [stream_key(message_id), sealed_key(message_id)]

    async def open(self) -> None:
        """Mark the reply accepted (an empty entry). Raises Sealed when it was ended meanwhile."""
        await self._add("")

    async def append(self, text: str) -> None:
        await self._add(text)
        self.text += text

    async def _add(self, text: str) -> None:
        added = await self.client.eval(APPEND_UNLESS_SEALED, 2, *self.keys, text, LIVE_STREAM_TTL_SECONDS)
        if not added:
            raise Sealed


@database_sync_to_async
def _streaming_before(seconds: float) -> list[tuple[int, str]]:
    """Streaming replies whose turn started more than `seconds` ago (younger ones may not have a lease yet).

    A turn's start also moves its conversation's updated_at: a continued reply was created long before.
    """
    since = timezone.now() - timedelta(seconds=seconds)
    rows = Message.objects.filter(
        status=Message.Status.STREAMING, created_at__lt=since, conversation__updated_at__lt=since
    )
    return list(rows.values_list("id", "conversation_id"))


@database_sync_to_async
def _workers_alive() -> bool:
    return InferenceWorker.seen_since(settings.CHAT_WORKER_TIMEOUT).exists()
