"""CHAT_INFERENCE=worker: replies run in `manage.py inference_worker` processes, over Redis.

Each live reply has two Redis keys next to the channel layer's (same prefix):

- `<prefix>:reply:<id>:text`, a Redis Stream: one entry per flushed chunk,
  written by the worker *before* it publishes the chunk (plus an empty entry
  when it accepts the request). It is the durable record of what sockets were
  sent: a socket that (re)connects reads the text so far from it, and a reply
  whose worker died is stored with the stream's text.
- `<prefix>:reply:<id>:lease`, a key that expires after CHAT_WORKER_TIMEOUT:
  set by the web process when it hands the request over (so a request no
  worker takes in time is given up) and renewed by the worker holding it.

The reaper runs in every web process and every worker: every
CHAT_WORKER_TIMEOUT / 4 seconds it ends the replies still `streaming` whose
lease has expired, through turns.finish(), so nothing stays `streaming` for
more than about CHAT_WORKER_TIMEOUT after its worker died, watched or not.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import redis.asyncio
from channels.db import database_sync_to_async
from channels.exceptions import ChannelFull
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from .. import turns
from ..generation import Record
from ..models import InferenceWorker, Message
from ..turns import Ending, Refused, layer_errors
from . import Runner

logger = logging.getLogger(__name__)

# The named channel every worker receives from: one request reaches one worker.
REQUESTS_CHANNEL = "inference.requests"
# A finished reply's stream is kept this long (a socket reconnecting late still reads it).
STREAM_TTL_SECONDS = 60
# A stream of a reply nobody finished is dropped after a day whatever happens.
LIVE_STREAM_TTL_SECONDS = 86_400
STOPPED_ANSWERING = "The inference worker stopped answering; the text so far is kept."
ALL_BUSY = "Every inference worker is busy; try again in a moment."
NO_WORKER = "No inference worker is running; try again later."
UNREACHABLE = "The inference service is unreachable; try again in a moment."


def control_group(conversation_id) -> str:
    """The group a worker joins while it holds a reply of the conversation: stop goes there."""
    return f"chat-control.{conversation_id}"


def _prefix() -> str:
    return settings.CHANNEL_LAYERS["default"].get("CONFIG", {}).get("prefix", "asgi")


def stream_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:text"


def lease_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:lease"


def stop_key(message_id: int) -> str:
    return f"{_prefix()}:reply:{message_id}:stop"


def lease_ms() -> int:
    return int(settings.CHAT_WORKER_TIMEOUT * 1000)


_clients: dict[int, redis.asyncio.Redis] = {}


def client() -> redis.asyncio.Redis:
    """A Redis client for the running event loop (tests run one loop per test)."""
    loop = id(asyncio.get_running_loop())
    if loop not in _clients:
        _clients[loop] = redis.asyncio.Redis.from_url(
            settings.REDIS_URL, socket_timeout=15, socket_connect_timeout=3, decode_responses=True
        )
    return _clients[loop]


class StreamRecord(Record):
    """The reply's text in its Redis stream, appended before each chunk is published."""

    def __init__(self, message_id: int) -> None:
        super().__init__()
        self.key = stream_key(message_id)

    async def open(self) -> None:
        await client().xadd(self.key, {"t": ""})
        await client().expire(self.key, LIVE_STREAM_TTL_SECONDS)

    async def append(self, text: str) -> None:
        await client().xadd(self.key, {"t": text})
        self.text += text


async def read_stream(message_id: int) -> tuple[bool, str]:
    """Whether a worker accepted the reply, and the text it published."""
    entries = await client().xrange(stream_key(message_id))
    return bool(entries), "".join(fields["t"] for _, fields in entries)


async def renew_leases(message_ids) -> None:
    """The holder of these replies is alive (a worker's heartbeat)."""
    async with client().pipeline(transaction=False) as pipe:
        for message_id in message_ids:
            pipe.set(lease_key(message_id), "held", px=lease_ms())
        await pipe.execute()


async def mark_stop(message_id: int, interrupted: bool) -> None:
    """Leave the stop where the worker that takes (or took) the reply reads it; `interrupted` wins."""
    value = "interrupted" if interrupted else "cancelled"
    await client().set(stop_key(message_id), value, ex=LIVE_STREAM_TTL_SECONDS, nx=not interrupted)


async def stop_marked(message_id: int) -> str | None:
    """The reply's stop mark ("cancelled" or "interrupted"), or None when nobody asked it to stop."""
    return await client().get(stop_key(message_id))


async def forget(message_id: int) -> None:
    """A reply ended: no lease or stop mark any more; its stream lingers a minute for late readers."""
    await client().delete(lease_key(message_id), stop_key(message_id))
    await client().expire(stream_key(message_id), STREAM_TTL_SECONDS)


class WorkerRunner(Runner):
    def __init__(self) -> None:
        self.reapers: dict[int, asyncio.Task] = {}

    def ensure_reaper(self) -> None:
        """Run the reaper on the current event loop (once per loop)."""
        loop = asyncio.get_running_loop()
        task = self.reapers.get(id(loop))
        if task is None or task.done():
            self.reapers[id(loop)] = loop.create_task(reap_forever())

    async def start(self, turn) -> None:
        self.ensure_reaper()
        request = {
            "type": "generate",
            "conversation_id": turn.conversation_id,
            "message_id": turn.message_id,
            "history": turn.history,
            "params": turn.params.to_dict(),
        }
        try:
            await client().set(lease_key(turn.message_id), "queued", px=lease_ms())
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
        await mark_stop(message_id, interrupted)
        event = {"type": "reply.stop", "conversation_id": conversation_id, "interrupted": interrupted}
        await get_channel_layer().group_send(control_group(conversation_id), event)
        return True

    async def snapshot(self, conversation_id: str) -> tuple[int, str] | None:
        self.ensure_reaper()
        message_id = await _streaming_message_id(conversation_id)
        if message_id is None:
            return None
        _, text = await read_stream(message_id)
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
            accepted, text = await read_stream(message_id)
            error = ("generation_failed", turns.RESTARTING)
            await turns.finish(conversation_id, message_id, Ending("interrupted", text, error=error))


async def reap_forever() -> None:
    while True:
        await asyncio.sleep(settings.CHAT_WORKER_TIMEOUT / 4)
        try:
            await reap()
        except (DatabaseError, *layer_errors()) as exc:
            logger.warning("reaper: %s", exc)


async def reap() -> int:
    """End the streaming replies whose lease expired; returns how many this process ended."""
    rows = await _streaming_before(settings.CHAT_WORKER_TIMEOUT)
    if not rows:
        return 0
    leases = await client().mget([lease_key(message_id) for message_id, _ in rows])
    ended = 0
    for (message_id, conversation_id), lease in zip(rows, leases, strict=True):
        if lease is None and await reap_one(str(conversation_id), message_id):
            ended += 1
    return ended


async def reap_one(conversation_id: str, message_id: int) -> bool:
    accepted, text = await read_stream(message_id)
    if accepted:
        ending = Ending("interrupted", text, error=("generation_failed", STOPPED_ANSWERING))
    elif await _workers_alive():
        ending = Ending("error", text, error=("busy", ALL_BUSY))
    else:
        ending = Ending("error", text, error=("generation_failed", NO_WORKER))
    if not await turns.finish(conversation_id, message_id, ending):
        return False
    logger.warning("reply %s: its lease expired, ended as %s", message_id, ending.reason)
    await forget(message_id)
    return True


@database_sync_to_async
def _streaming_message_id(conversation_id) -> int | None:
    return (
        Message.objects.filter(conversation_id=conversation_id, status=Message.Status.STREAMING)
        .values_list("id", flat=True)
        .last()
    )


@database_sync_to_async
def _streaming_before(seconds: float) -> list[tuple[int, str]]:
    """Streaming replies created more than `seconds` ago (younger ones may not have a lease yet)."""
    since = timezone.now() - timedelta(seconds=seconds)
    rows = Message.objects.filter(status=Message.Status.STREAMING, created_at__lt=since)
    return list(rows.values_list("id", "conversation_id"))


@database_sync_to_async
def _workers_alive() -> bool:
    return InferenceWorker.seen_since(settings.CHAT_WORKER_TIMEOUT).exists()
