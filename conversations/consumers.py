"""The chat WebSocket: one socket per open conversation tab.

The consumer validates frames and delegates: the database work sits in small
`_`-prefixed methods, the generation in conversations.replies. Frames are in
docs/protocol.md.
"""

from __future__ import annotations

import json
import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.db import transaction

from inference import GenerationParams, InvalidParams

from . import runtime
from .models import Conversation, Message
from .replies import group_name, replies

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404


class Busy(Exception):
    """A reply is already being generated in this conversation."""


class ChatConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
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
        await self.channel_layer.group_add(self.group, self.channel_name)
        replies.watch(self.conversation.id)
        await self.accept()
        await self._resume_live_reply()

    async def disconnect(self, code) -> None:
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)
            replies.unwatch(self.conversation.id)

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
        await handlers[kind](content)

    async def handle_send(self, content: dict) -> None:
        text = content.get("content")
        if not isinstance(text, str) or not text.strip():
            await self.send_error("invalid", "A message needs some text.")
            return
        if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
            await self.send_error("invalid", f"A message can have at most {settings.CHAT_MAX_MESSAGE_CHARS} characters.")
            return
        params = self._params(content.get("params"))
        if isinstance(params, str):
            await self.send_error("invalid", params)
            return
        try:
            user_message, reply, history = await self._create_turn(text, params)
        except Busy:
            await self.send_error("busy", "A reply is already being generated in this conversation.")
            return
        await self.channel_layer.group_send(self.group, {"type": "chat.message", "message": user_message})
        await self._start_reply(reply, history, params)

    async def handle_regenerate(self, content: dict) -> None:
        params = self._params(content.get("params"))
        if isinstance(params, str):
            await self.send_error("invalid", params)
            return
        try:
            created = await self._replace_last_reply()
        except Busy:
            await self.send_error("busy", "A reply is already being generated in this conversation.")
            return
        if created is None:
            await self.send_error("invalid", "There is no reply to regenerate.")
            return
        reply, history, replaced_id = created
        await self._start_reply(reply, history, params, replaces=replaced_id)

    async def handle_stop(self, content: dict) -> None:
        if not replies.stop(self.conversation.id):
            await self.send_error("invalid", "No reply is being generated.")

    async def _start_reply(self, reply: Message, history: list[dict], params: GenerationParams,
                           replaces: int | None = None) -> None:
        await self.channel_layer.group_send(
            self.group, {"type": "chat.start", "message_id": reply.id, "replaces": replaces}
        )
        replies.start(self.conversation.id, reply.id, history, params, runtime.get_engine())

    async def _resume_live_reply(self) -> None:
        """A socket opening mid-reply first gets the text so far."""
        live = replies.get(self.conversation.id)
        if live is not None:
            self.sent[live.message_id] = len(live.text)
            await self.send_json({"type": "start", "message_id": live.message_id, "content": live.text})

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
        frame = {"type": "start", "message_id": event["message_id"]}
        if event.get("replaces"):
            frame["replaces"] = event["replaces"]
        await self.send_json(frame)

    async def chat_queued(self, event: dict) -> None:
        await self.send_json({"type": "queued", "message_id": event["message_id"], "position": event["position"]})

    async def chat_token(self, event: dict) -> None:
        message_id, offset, text = event["message_id"], event["offset"], event["text"]
        already = self.sent.get(message_id, 0)
        if offset + len(text) <= already:
            return
        text = text[max(already - offset, 0):]
        self.sent[message_id] = offset + len(event["text"])
        await self.send_json({"type": "token", "message_id": message_id, "text": text})

    async def chat_end(self, event: dict) -> None:
        self.sent.pop(event["message_id"], None)
        await self.send_json({key: event[key] for key in ("message_id", "finish_reason", "status", "usage", "timing")}
                             | {"type": "end"})

    async def chat_error(self, event: dict) -> None:
        await self.send_error(event["code"], event["message"])

    # Database work, off the event loop.

    @database_sync_to_async
    def _get_conversation(self, user, conversation_id) -> Conversation | None:
        return Conversation.objects.for_user(user).filter(id=conversation_id).first()

    @database_sync_to_async
    def _create_turn(self, text: str, params: GenerationParams) -> tuple[dict, Message, list[dict]]:
        """Store the user message and an empty streaming reply; raises Busy."""
        with transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(id=self.conversation.id)
            if replies.get(conversation.id) or conversation.live_reply():
                raise Busy
            user_message = Message.objects.create(conversation=conversation, role=Message.Role.USER, content=text)
            history = conversation.prompt_history()
            reply = Message.objects.create(
                conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING,
                model_name=runtime.model_name(),
            )
            if not conversation.title:
                conversation.title = conversation.title_from(text)
            conversation.touch()
        return user_message.as_dict(), reply, history

    @database_sync_to_async
    def _replace_last_reply(self) -> tuple[Message, list[dict], int] | None:
        """Delete the last assistant reply and start a new one in its place."""
        with transaction.atomic():
            conversation = Conversation.objects.select_for_update().get(id=self.conversation.id)
            if replies.get(conversation.id) or conversation.live_reply():
                raise Busy
            last = conversation.messages.last()
            if last is None or last.role != Message.Role.ASSISTANT:
                return None
            replaced_id = last.id
            last.delete()
            reply = Message.objects.create(
                conversation=conversation, role=Message.Role.ASSISTANT, status=Message.Status.STREAMING,
                model_name=runtime.model_name(),
            )
            conversation.touch()
            return reply, conversation.prompt_history(until=reply), replaced_id
