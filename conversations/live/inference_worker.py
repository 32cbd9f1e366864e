"""The inference worker process for CHAT_INFERENCE=worker: `python manage.py inference_worker`.

A worker is a Channels worker (channels.worker.Worker, an asgiref
StatelessServer) listening on the named channel "inference.requests": each
request that a web process sends there reaches exactly one worker, and
becomes an application instance of it, a ReplyConsumer. The consumer runs the
same conversations.live.generation.run_reply as local mode, with the reply's
record in its Redis stream (conversations.live.leases), so the frames and
the stored message are the same; the engine batches every reply the worker
holds. A reply on an endpoint's model runs here too, on the worker's own
registry of endpoints (conversations.endpoints), with the same record, lease
and stop: docs/models.md says why.

Backpressure: Channels' own listener receives as fast as messages come, so
one worker would take every request. This one receives a request only while
it holds fewer than max_batch_size + ROOM_MARGIN; the rest wait in Redis for
whichever worker has room.

Liveness: every CHAT_WORKER_TIMEOUT / 5 seconds the worker renews the lease
of each reply it holds and upserts its InferenceWorker row; a reply whose
lease expires is ended by a reaper (conversations.live.leases).

Stopping (SIGTERM or SIGINT): stop receiving, let the held replies run for up
to CHAT_SHUTDOWN_GRACE_S seconds, then cut the rest off; they are stored as
`interrupted` with the text their sockets were sent, the engine is closed and
the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from channels.consumer import AsyncConsumer
from channels.db import database_sync_to_async
from channels.exceptions import StopConsumer
from channels.layers import get_channel_layer
from channels.worker import Worker
from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone

from inference import GenerationParams, InvalidParams

from ..endpoints.registry import Registry
from ..models import InferenceWorker, Message
from .frames import layer_errors
from .generation import LiveReply, Sealed, run_reply
from .leases import Leases
from .replies import Turn
from .runners.worker import REQUESTS_CHANNEL, control_group

logger = logging.getLogger(__name__)

# Requests held beyond the batch: they wait inside the engine (and hear their
# queue position), so a row that frees up is refilled without a Redis trip.
ROOM_MARGIN = 2
# Backoff while Redis is unreachable: from RETRY_MIN doubling to RETRY_MAX seconds.
RETRY_MIN, RETRY_MAX = 0.5, 5.0
# After the grace, how long cut-off replies get to store their state.
CUT_OFF_SECONDS = 15.0


def heartbeat_interval() -> float:
    return settings.CHAT_WORKER_TIMEOUT / 5


class ReplyConsumer(AsyncConsumer):
    """One request held by a worker, from `generate` to the stored end of its reply.

    Its own channel joins the conversation's control group while it holds
    the reply, so a `stop` from any web process reaches it as reply.stop;
    a stop sent before it joined is read from the reply's stop mark
    (conversations.live.leases). The reply runs as a task, so a stop is
    handled while it streams.
    """

    reply: LiveReply | None = None

    async def generate(self, message: dict) -> None:
        worker: InferenceWorkerServer = self.scope["worker"]
        try:
            started = await self._start(worker, message)
        except Exception:
            # The database or the layer failed before the reply ran: give its room back.
            worker.release(message["message_id"])
            raise
        if not started:
            worker.release(message["message_id"])
            raise StopConsumer

    async def _start(self, worker: InferenceWorkerServer, message: dict) -> bool:
        """Start the requested reply as a task; False when it is not to be run."""
        message_id, conversation_id = message["message_id"], message["conversation_id"]
        try:
            params = GenerationParams.from_dict(message["params"])
        except InvalidParams as exc:  # web processes validate; a stray sender may not
            logger.error("request for reply %s has bad params: %s", message_id, exc)
            return False
        if not await _still_streaming(message_id):
            # A reaper gave up on it while it waited in Redis.
            logger.info("request for reply %s is no longer wanted", message_id)
            return False
        await worker.leases.renew([message_id])
        model = message.get("model") or worker.models.local_model or ""
        turn = Turn(
            conversation_id,
            message_id,
            message["history"],
            params,
            model=model,
            prefill=message.get("prefill", ""),
            before=message.get("before") or {},
            title=message.get("title"),
            path=message.get("path") or [],
            summary=message.get("summary"),
        )
        record = worker.leases.record(message_id)
        try:
            await record.open()
        except Sealed:  # a reaper ended it between the check above and now
            logger.info("request for reply %s was given up meanwhile", message_id)
            return False
        self.reply = reply = LiveReply(turn, record=record)
        await self._listen_for_stop(reply, worker.leases)
        logger.info("reply %s accepted (%d held)", message_id, len(worker.held))
        reply.task = asyncio.create_task(self._run(reply, worker))
        worker.held[message_id] = reply
        return True

    async def _run(self, reply: LiveReply, worker: InferenceWorkerServer) -> None:
        try:
            await run_reply(reply, worker.models.engine(reply.turn.model))
        finally:
            try:
                await worker.leases.forget(reply.message_id)
                await self.channel_layer.group_discard(control_group(reply.conversation_id), self.channel_name)
            except layer_errors() as exc:
                logger.warning("reply %s: cannot clean up after it: %s", reply.message_id, exc)
            worker.release(reply.message_id)

    async def _listen_for_stop(self, reply: LiveReply, leases: Leases) -> None:
        """Join the control group, then read the stop mark: a stop sent before the join is not lost.

        In this order there is no gap: a stop sent after the join reaches the
        group; one sent before left its mark before it was sent.
        """
        try:
            await self.channel_layer.group_add(control_group(reply.conversation_id), self.channel_name)
        except layer_errors() as exc:  # a later reply.stop will not reach it; the reply still runs
            logger.warning("reply %s: cannot join its control group: %s", reply.message_id, exc)
        try:
            mark = await leases.stop_marked(reply.message_id)
        except layer_errors() as exc:
            logger.warning("reply %s: cannot read its stop mark: %s", reply.message_id, exc)
            return
        if mark is not None:
            logger.info("reply %s was stopped (%s) before it was accepted", reply.message_id, mark)
            _stop(reply, interrupted=mark == "interrupted")

    async def reply_stop(self, message: dict) -> None:
        if self.reply is not None:
            _stop(self.reply, message.get("interrupted", False))

    async def reply_done(self, message: dict) -> None:
        raise StopConsumer


def _stop(reply: LiveReply, interrupted: bool) -> None:
    reply.interrupted = reply.interrupted or interrupted
    reply.cancel.set()


@database_sync_to_async
def _still_streaming(message_id: int) -> bool:
    return Message.objects.filter(id=message_id, status=Message.Status.STREAMING).exists()


class InferenceWorkerServer(Worker):
    """A Channels worker on "inference.requests" that takes a request only when it has room."""

    # Off in tests that run a worker inside pytest's own event loop.
    handle_signals = True

    def __init__(self, models: Registry, name: str | None = None, channel_layer=None) -> None:
        super().__init__(ReplyConsumer.as_asgi(), [REQUESTS_CHANNEL], channel_layer or get_channel_layer())
        self.models = models
        engine = models.local_engine
        if engine is None:
            raise ValueError("an inference worker serves a local model")
        self.engine = engine
        self.leases = Leases()
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.room = engine.config.max_batch_size + ROOM_MARGIN
        # message id -> its reply once started (None while the instance checks it).
        self.held: dict[int, LiveReply | None] = {}
        self.changed = asyncio.Event()
        self.stopping = asyncio.Event()
        self.started_at = timezone.now()

    def release(self, message_id: int) -> None:
        """The request ended (or was dropped): make room, and end its application instance."""
        self.held.pop(message_id, None)
        self.changed.set()
        instance = self.application_instances.get(f"reply.{message_id}")
        if instance is not None:
            instance["input_queue"].put_nowait({"type": "reply.done"})

    async def handle(self) -> None:
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(signum, self.stop)
        listener = asyncio.create_task(self.listener(REQUESTS_CHANNEL))
        beat = asyncio.create_task(self.beat())
        leases = asyncio.create_task(self.renew())
        reaper = asyncio.create_task(self.leases.reap_forever())
        stopping = asyncio.create_task(self.stopping.wait())
        try:
            await asyncio.wait({listener, stopping}, return_when=asyncio.FIRST_COMPLETED)
            listener.cancel()
            await self.drain()
        finally:
            for task in (beat, leases, reaper, stopping):
                task.cancel()
            await database_sync_to_async(self.unregister)()
        failure = listener.exception() if listener.done() and not listener.cancelled() else None
        if failure is not None:
            raise failure

    def stop(self) -> None:
        """Stop taking requests and shut down (the signal handler)."""
        if not self.stopping.is_set():
            logger.info("worker %s stopping: %d reply(s) held", self.name, len(self.held))
        self.stopping.set()

    async def listener(self, channel: str) -> None:
        """Channels' listener, but one request at a time and only while there is room."""
        while not self.stopping.is_set():
            while len(self.held) >= self.room:
                self.changed.clear()
                await self.changed.wait()
            message = await self.receive(channel)
            if message.get("type") != "generate" or "message_id" not in message:
                logger.error("ignoring a message on %s: %r", channel, message.get("type"))
                continue
            message_id = message["message_id"]
            self.held[message_id] = None
            queue = self.get_or_create_application_instance(
                f"reply.{message_id}", {"type": "channel", "channel": channel, "worker": self}
            )
            await queue.put(message)

    async def receive(self, channel: str) -> dict:
        """The next message; while Redis is unreachable, retry with backoff instead of dying."""
        delay = RETRY_MIN
        while True:
            try:
                message = await self.channel_layer.receive(channel)
            except layer_errors() as exc:
                logger.warning("channel layer unreachable (%s); retrying in %.1f s", exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if delay > RETRY_MIN:
                logger.info("channel layer reachable again")
            return message

    async def drain(self) -> None:
        """Let held replies finish within CHAT_SHUTDOWN_GRACE_S seconds, then cut the rest off."""
        tasks = [reply.task for reply in self.held.values() if reply is not None and reply.task]
        if not tasks:
            return
        logger.info("waiting up to %.0f s for %d reply(s)", settings.CHAT_SHUTDOWN_GRACE, len(tasks))
        _, pending = await asyncio.wait(tasks, timeout=settings.CHAT_SHUTDOWN_GRACE)
        if not pending:
            return
        logger.warning("cutting off %d reply(s) as interrupted", len(pending))
        for reply in list(self.held.values()):
            if reply is not None:
                reply.interrupted = True
                reply.cancel.set()
        await asyncio.wait(pending, timeout=CUT_OFF_SECONDS)

    async def renew(self) -> None:
        """Renew the lease of every reply held, so no reaper ends them."""
        while True:
            held = list(self.held)
            try:
                if held:
                    await self.leases.renew(held)
            except layer_errors() as exc:
                logger.warning("cannot renew the leases of %d reply(s): %s", len(held), exc)
            await asyncio.sleep(heartbeat_interval())

    async def beat(self) -> None:
        """Report this worker in its InferenceWorker row every heartbeat interval."""
        while True:
            try:
                await database_sync_to_async(self.register)()
            except DatabaseError as exc:
                logger.warning("cannot report worker %s: %s", self.name, exc)
            await asyncio.sleep(heartbeat_interval())

    def register(self) -> None:
        info = self.engine.info
        InferenceWorker.objects.update_or_create(
            name=self.name,
            defaults={
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "model_name": info.model_name,
                "device": info.device,
                "dtype": info.dtype,
                "started_at": self.started_at,
                "last_seen": timezone.now(),
                "active_replies": len(self.held),
            },
        )

    def unregister(self) -> None:
        try:
            InferenceWorker.objects.filter(name=self.name).delete()
        except DatabaseError as exc:
            logger.warning("cannot remove worker %s: %s", self.name, exc)
