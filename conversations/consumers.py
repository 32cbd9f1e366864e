"""The chat WebSocket: one socket per open conversation tab.

The consumer validates frames and delegates: the database work sits in small
`_`-prefixed methods, the generation to a dispatcher (conversations.dispatch:
this process, or inference workers over Redis). Frames are in
docs/protocol.md.

In worker mode a reply runs in another process, which may die: each socket
watching a live reply runs a watchdog, and if nothing about the reply (token,
heartbeat, snapshot) arrives for CHAT_WORKER_TIMEOUT seconds it tells its
browser and marks the stored reply interrupted.
"""

from __future__ import annotations

import asyncio
import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction

from inference import GenerationParams, InvalidParams

from . import runtime
from .dispatch import LAYER_ERRORS, DispatchError, get_dispatcher
from .models import Conversation, InferenceWorker, Message
from .replies import group_name

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404
# The channel layer (Redis) went away under this socket; the browser reconnects.
CLOSE_LAYER_DOWN = 1011
LAYER_DOWN = "The message service is unreachable; try again in a moment."


class Busy(Exception):
    """A reply is already being generated in this conversation."""


class Gone(Exception):
    """The conversation was deleted (in another tab) after this socket opened."""


class ChatConsumer(AsyncJsonWebsocketConsumer):
    dispatcher = None
    watchdog: asyncio.Task | None = None
    watched: int | None = None

    async def __call__(self, scope, receive, send) -> None:
        # The base class lets a channel layer error (Redis went away) end the
        # application with a traceback; tell the browser and close instead,
        # so it reconnects once Redis is back.
        try:
            await super().__call__(scope, receive, send)
        except LAYER_ERRORS as exc:
            logger.warning("channel layer lost under a chat socket: %s", exc)
            self._stop_watching()
            await self.send_error("generation_failed", LAYER_DOWN)
            await self.close(code=CLOSE_LAYER_DOWN)

    async def connect(self) -> None:
        self.dispatcher = get_dispatcher()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        self.conversation = await self._get_conversation(user, self.scope["url_route"]["kwargs"]["conversation_id"])
        if self.conversation is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.group = group_name(self.conversation.id)
        # Characters of each reply this socket has already sent, so text
        # that reaches it twice (snapshot and group) goes out once.
        self.sent: dict[int, int] = {}
        try:
            await self.channel_layer.group_add(self.group, self.channel_name)
        except LAYER_ERRORS as exc:
            logger.warning("cannot join %s: %s", self.group, exc)
            del self.group
            await self.accept()
            await self.send_error("generation_failed", LAYER_DOWN)
            await self.close(code=CLOSE_LAYER_DOWN)
            return
        self.dispatcher.watch(self.conversation.id)
        await self.accept()
        await self._resume_live_reply()

    async def disconnect(self, code) -> None:
        self._stop_watching()
        if hasattr(self, "group"):
            self.dispatcher.unwatch(self.conversation.id)
            try:
                await self.channel_layer.group_discard(self.group, self.channel_name)
            except LAYER_ERRORS as exc:  # the membership expires by itself
                logger.warning("cannot leave %s: %s", self.group, exc)

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        # The base class would let bad JSON crash the socket; answer instead.
        try:
            content = json.loads(text_data or "")
        except ValueError:
            await self.send_error("invalid", "Frames must be JSON objects.")
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        handlers = {"send": self.handle_send, "stop": self.handle_stop, "regenerate": self.handle_regenerate}
        kind = content.get("type") if isinstance(content, dict) else None
        if kind not in handlers:
            await self.send_error("invalid", "Unknown frame type; expected send, stop or regenerate.")
            return
        try:
            await handlers[kind](content)
        except Busy:
            await self.send_error("busy", "A reply is already being generated in this conversation.")
        except Gone:
            await self.send_error("invalid", "This conversation no longer exists.")
            await self.close(code=CLOSE_NOT_FOUND)

    async def handle_send(self, content: dict) -> None:
        text = content.get("content")
        if not isinstance(text, str) or not text.strip():
            await self.send_error("invalid", "A message needs some text.")
            return
        if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            await self.send_error(
                "invalid", f"A message can have at most {settings.CHAT_MAX_MESSAGE_CHARS} characters."
            )
            return
        params = self._params(content.get("params"))
        if isinstance(params, str):
            await self.send_error("invalid", params)
            return
        user_message, reply, history = await self._create_turn(text, params)
        await self._start_reply(reply, history, params, user_message=user_message)

    async def handle_regenerate(self, content: dict) -> None:
        params = self._params(content.get("params"))
        if isinstance(params, str):
            await self.send_error("invalid", params)
            return
        created = await self._replace_last_reply(params)
        if created is None:
            await self.send_error("invalid", "There is no reply to regenerate.")
            return
        reply, history, replaced_id = created
        await self._start_reply(reply, history, params, replaces=replaced_id)

    async def handle_stop(self, content: dict) -> None:
        try:
            stopped = await self.dispatcher.stop(self.conversation.id)
        except LAYER_ERRORS:
            await self.send_error("generation_failed", LAYER_DOWN)
            return
        if not stopped:
            await self.send_error("invalid", "No reply is being generated.")

    async def _start_reply(
        self,
        reply: Message,
        history: list[dict],
        params: GenerationParams,
        replaces: int | None = None,
        user_message: dict | None = None,
    ) -> None:
        try:
            if user_message is not None:
                await self.channel_layer.group_send(self.group, {"type": "chat.message", "message": user_message})
            await self.channel_layer.group_send(
                self.group, {"type": "chat.start", "message_id": reply.id, "replaces": replaces}
            )
            await self.dispatcher.start(self.conversation.id, reply.id, history, params)
        except DispatchError as exc:
            code, message = exc.code, exc.message
        except LAYER_ERRORS as exc:
            logger.warning("cannot start reply %s: %s", reply.id, exc)
            code, message = "generation_failed", LAYER_DOWN
        else:
            return
        # Nobody will generate it: store it as failed so the conversation is not stuck busy.
        self._stop_watching()
        await self._end_reply(reply.id, "error")
        await self._send_stored_end(reply.id, error=(code, message))

    async def _resume_live_reply(self) -> None:
        """A socket opening mid-reply first gets the text so far (a chat.snapshot event)."""
        try:
            message_id = await self.dispatcher.sync(self.conversation.id, self.channel_name)
        except LAYER_ERRORS as exc:
            logger.warning("cannot sync the live reply of %s: %s", self.conversation.id, exc)
            return
        if message_id is not None:
            self._watch(message_id, accepted=True)

    # Worker mode: silence about a live reply means its worker is gone.

    def _watch(self, message_id: int, accepted: bool = False) -> None:
        """Start the watchdog for a live reply (a no-op when replies run in this process)."""
        if not self.dispatcher.supervised or self.watched == message_id:
            return
        self._stop_watching()
        self.watched, self.accepted, self.heard = message_id, accepted, asyncio.Event()
        self.watchdog = asyncio.create_task(self._watchdog(message_id))

    def _hear(self, message_id: int) -> None:
        """Something about the watched reply arrived from the process generating it."""
        if self.watched == message_id:
            self.accepted = True
            self.heard.set()

    def _stop_watching(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()
        self.watchdog = self.watched = None

    async def _watchdog(self, message_id: int) -> None:
        while True:
            self.heard.clear()
            try:
                await asyncio.wait_for(self.heard.wait(), settings.CHAT_WORKER_TIMEOUT)
            except TimeoutError:
                break
        self.watchdog = self.watched = None
        if self.accepted:
            reason, code = "interrupted", "generation_failed"
            message = "The inference worker stopped answering; the text so far is kept."
        elif await self._workers_alive():
            reason, code = "error", "busy"
            message = "Every inference worker is busy; try again in a moment."
        else:
            reason, code = "error", "generation_failed"
            message = "No inference worker is running; try again later."
        logger.warning("reply %s: nothing heard for %.0f s (%s)", message_id, settings.CHAT_WORKER_TIMEOUT, code)
        await self._end_reply(message_id, reason)
        await self._send_stored_end(message_id, error=(code, message))

    async def _send_stored_end(self, message_id: int, error: tuple[str, str]) -> None:
        """Close the reply on this socket from what the database holds.

        The `error` frame goes first when the reply did fail (by this socket's
        hand or another's); a reply that ended well but whose `end` event was
        lost just gets its `end`.
        """
        message = await self._get_message(message_id)
        if message is None:
            return
        if message.status in (Message.Status.INTERRUPTED, Message.Status.ERROR):
            await self.send_error(*error)
        if message_id not in self.sent:
            await self.send_json({"type": "start", "message_id": message_id, "content": message.content})
        self.sent.pop(message_id, None)
        await self.send_json(
            {
                "type": "end",
                "message_id": message_id,
                "finish_reason": message.finish_reason,
                "status": message.status,
                "usage": {"prompt_tokens": message.prompt_tokens, "completion_tokens": message.completion_tokens},
                "timing": {
                    "ttft_ms": message.ttft_ms,
                    "duration_ms": message.duration_ms,
                    "tokens_per_s": message.tokens_per_s,
                },
            }
        )

    def _params(self, raw) -> GenerationParams | str:
        """The conversation's parameters overridden by the frame's; an error text if invalid."""
        if raw is not None and not isinstance(raw, dict):
            return "params must be an object"
        try:
            base = GenerationParams.from_dict(self.conversation.params())
            return GenerationParams.from_dict(raw or {}, base=base)
        except InvalidParams as exc:
            return str(exc)

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    # Group events, one method per event type (chat.token -> chat_token).

    async def chat_message(self, event: dict) -> None:
        await self.send_json({"type": "message", "message": event["message"]})

    async def chat_start(self, event: dict) -> None:
        self.sent[event["message_id"]] = 0
        self._watch(event["message_id"])
        frame = {"type": "start", "message_id": event["message_id"]}
        if event.get("replaces"):
            frame["replaces"] = event["replaces"]
        await self.send_json(frame)

    async def chat_accepted(self, event: dict) -> None:
        self._hear(event["message_id"])

    async def chat_alive(self, event: dict) -> None:
        self._hear(event["message_id"])

    async def chat_snapshot(self, event: dict) -> None:
        """The text so far of a reply this socket joined mid-way (sent to this channel only)."""
        message_id, text = event["message_id"], event["text"]
        self._hear(message_id)
        if message_id in self.sent:
            return
        self.sent[message_id] = len(text)
        await self.send_json({"type": "start", "message_id": message_id, "content": text})

    async def chat_queued(self, event: dict) -> None:
        self._hear(event["message_id"])
        await self.send_json({"type": "queued", "message_id": event["message_id"], "position": event["position"]})

    async def chat_token(self, event: dict) -> None:
        message_id, offset, text = event["message_id"], event["offset"], event["text"]
        self._hear(message_id)
        if message_id not in self.sent:
            return  # a reply this socket joined mid-way: its pending snapshot holds this text
        already = self.sent[message_id]
        if offset + len(text) <= already:
            return
        text = text[max(already - offset, 0) :]
        self.sent[message_id] = offset + len(event["text"])
        await self.send_json({"type": "token", "message_id": message_id, "text": text})

    async def chat_end(self, event: dict) -> None:
        if self.watched == event["message_id"]:
            self._stop_watching()
        self.sent.pop(event["message_id"], None)
        await self.send_json(
            {key: event[key] for key in ("message_id", "finish_reason", "status", "usage", "timing")} | {"type": "end"}
        )

    async def chat_error(self, event: dict) -> None:
        await self.send_error(event["code"], event["message"])

    # Database work, off the event loop.

    @database_sync_to_async
    def _get_conversation(self, user, conversation_id) -> Conversation | None:
        return Conversation.objects.for_user(user).filter(id=conversation_id).first()

    def _lock_idle_conversation(self) -> Conversation:
        """This socket's conversation, locked for the transaction; raises Gone or Busy."""
        conversation = Conversation.objects.select_for_update().filter(id=self.conversation.id).first()
        if conversation is None:
            raise Gone
        if self.dispatcher.in_progress(conversation.id) or conversation.live_reply():
            raise Busy
        return conversation

    @database_sync_to_async
    def _create_turn(self, text: str, params: GenerationParams) -> tuple[dict, Message, list[dict]]:
        """Store the user message and an empty streaming reply; raises Busy or Gone."""
        with transaction.atomic():
            conversation = self._lock_idle_conversation()
            user_message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=text)
            history = conversation.prompt_history()
            reply = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model_name=runtime.model_name(),
            )
            conversation.start_turn(params.to_dict(), first_text=text)
        self.conversation.set_params(params.to_dict())
        return user_message.as_dict(), reply, history

    @database_sync_to_async
    def _replace_last_reply(self, params: GenerationParams) -> tuple[Message, list[dict], int] | None:
        """Delete the last assistant reply and start a new one in its place; raises Busy or Gone."""
        with transaction.atomic():
            conversation = self._lock_idle_conversation()
            last = conversation.messages.last()
            if last is None or last.role != Message.Role.ASSISTANT:
                return None
            replaced_id = last.id
            last.delete()
            reply = Message.objects.create(
                conversation=conversation,
                role=Message.Role.ASSISTANT,
                status=Message.Status.STREAMING,
                model_name=runtime.model_name(),
            )
            conversation.start_turn(params.to_dict())
        self.conversation.set_params(params.to_dict())
        return reply, conversation.prompt_history(until=reply), replaced_id

    @database_sync_to_async
    def _get_message(self, message_id: int) -> Message | None:
        return Message.objects.filter(id=message_id).first()

    @database_sync_to_async
    def _end_reply(self, message_id: int, reason: str) -> bool:
        """Mark a reply still streaming as ended for `reason`; False if it already ended.

        Conditional, so when several sockets (in several processes) give up on
        the same reply only the first changes it, and a reply that did end is
        left alone.
        """
        return bool(
            Message.objects.filter(id=message_id, status=Message.Status.STREAMING).update(
                status=Message.STATUS_FOR_REASON[reason], finish_reason=reason
            )
        )

    @database_sync_to_async
    def _workers_alive(self) -> bool:
        return InferenceWorker.seen_since(settings.CHAT_WORKER_TIMEOUT).exists()
