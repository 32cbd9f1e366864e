"""The chat WebSocket: one socket per open conversation tab.

The consumer checks and parses frames and hands them to conversations.live.turns,
which starts the turn (its rows and first frames; replies.finish ends it). What it keeps itself is how much
of each live reply this socket has sent, so text that reaches it twice (the
snapshot on connect, then the group's events) goes out once, and text it
missed is sent before the `end`. Frames are in docs/protocol.md.
"""

from __future__ import annotations

import asyncio
import json
import logging

from asgiref.sync import async_to_sync
from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import DatabaseError

from inference import GenerationParams, InvalidParams

from .. import accounts
from ..models import Conversation, unstorable
from . import state, sweep, turns
from .frames import client_frame, group_name, layer_errors, user_group
from .turns import Gone, Refused

logger = logging.getLogger(__name__)

CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_NOT_FOUND = 4404
CLOSE_WAITING = 4423  # the account waits for staff's approval (conversations.accounts)
# The channel layer (Redis) went away under this socket; the browser reconnects.
CLOSE_LAYER_DOWN = 1011
# The server is going away (the `end` of every reply this socket watched went out first).
CLOSE_RESTART = 4503  # WebSocket servers may only close with 1000 or 4000-4999; the page reconnects
LAYER_DOWN = "The message service is unreachable; try again in a moment."
FRAME_TYPES = "send, stop, regenerate, continue, edit or switch"


class ChatConsumer(AsyncJsonWebsocketConsumer):
    conversation = None

    async def __call__(self, scope, receive, send) -> None:
        # The base class lets a channel layer error (Redis went away) end the
        # application with a traceback; tell the browser and close instead,
        # so it reconnects once Redis is back.
        try:
            await super().__call__(scope, receive, send)
        except layer_errors() as exc:
            logger.warning("channel layer lost under a chat socket: %s", exc)
            await self.send_error("generation_failed", LAYER_DOWN)
            await self.close(code=CLOSE_LAYER_DOWN)

    async def dispatch(self, message: dict) -> None:
        # Channels closes stale database connections before every message, on the one thread all
        # database work of the process shares. Group events (chat.*) only send frames: each streamed
        # token would wait there behind other chats' turns and saves, and cost a thread hop.
        if not message["type"].startswith("chat."):
            await super().dispatch(message)
            return
        await getattr(self, get_handler_name(message))(message)

    async def connect(self) -> None:
        # Characters of each live reply this socket has sent.
        self.sent: dict[int, int] = {}
        self.closed = asyncio.Event()
        # This process's state, as it was when the socket opened (tests swap it whole).
        self.live = state.current()
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=CLOSE_UNAUTHENTICATED)
            return
        if await database_sync_to_async(accounts.is_pending)(user):
            await self.close(code=CLOSE_WAITING)  # waiting for approval: no model for it yet
            return
        conversation_id = self.scope["url_route"]["kwargs"]["conversation_id"]
        self.conversation = await self._get_conversation(user, conversation_id)
        if self.conversation is None:
            await self.close(code=CLOSE_NOT_FOUND)
            return
        self.key = str(self.conversation.id)
        self.user_id, self.session_key = user.pk, self.scope["session"].session_key
        try:
            await self.channel_layer.group_add(group_name(self.key), self.channel_name)
            await self.channel_layer.group_add(user_group(self.user_id), self.channel_name)
        except layer_errors() as exc:
            logger.warning("cannot join %s: %s", self.key, exc)
            self.conversation = None
            await self.accept()
            await self.send_error("generation_failed", LAYER_DOWN)
            await self.close(code=CLOSE_LAYER_DOWN)
            return
        self.live.runner.watch(self.key)
        self.live.sockets.add(self)
        await self._seen()
        await self.accept()
        await self._resume_live_reply()

    async def _resume_live_reply(self) -> None:
        """A socket opening mid-reply first gets the text so far, then the rest as any tab."""
        try:
            snapshot = await self.live.runner.snapshot(self.key)
        except layer_errors() as exc:
            logger.warning("cannot read the live reply of %s: %s", self.key, exc)
            return
        if snapshot is not None:
            message_id, text = snapshot
            self.sent[message_id] = len(text)
            await self.send_json({"type": "start", "message_id": message_id, "content": text})

    async def disconnect(self, code) -> None:
        self.closed.set()
        if self.conversation is not None:
            self.live.sockets.discard(self)
            self.live.runner.unwatch(self.key)
            try:
                await self.channel_layer.group_discard(group_name(self.key), self.channel_name)
                await self.channel_layer.group_discard(user_group(self.user_id), self.channel_name)
            except layer_errors() as exc:  # the membership expires by itself
                logger.warning("cannot leave %s: %s", self.key, exc)
            await self._seen()  # a temporary chat's grace runs from its last tab's close

    def watching(self) -> set[tuple[str, int]]:
        """The live replies this socket follows (shutdown waits for their `end`)."""
        return {(self.key, message_id) for message_id in self.sent}

    async def receive(self, text_data=None, bytes_data=None, **kwargs) -> None:
        # The base class would let bad JSON (or JSON nested too deep) crash the socket.
        try:
            content = json.loads(text_data or "")
        except (ValueError, RecursionError):
            await self.send_error("invalid", "Frames must be JSON objects.")
            return
        await self.receive_json(content)

    async def receive_json(self, content, **kwargs) -> None:
        handlers = {
            "send": self.handle_send,
            "stop": self.handle_stop,
            "regenerate": self.handle_regenerate,
            "continue": self.handle_continue,
            "edit": self.handle_edit,
            "switch": self.handle_switch,
        }
        kind = content.get("type") if isinstance(content, dict) else None
        if not isinstance(kind, str) or kind not in handlers:
            await self.send_error("invalid", f"Unknown frame type; expected {FRAME_TYPES}.")
            return
        try:
            await handlers[kind](content)
        except Gone as exc:
            await self.send_error(exc.code, exc.message)
            await self.close(code=CLOSE_NOT_FOUND)
        except Refused as exc:
            await self.send_error(exc.code, exc.message)
        except layer_errors() as exc:
            logger.warning("frame %s not handled: %s", kind, exc)
            await self.send_error("generation_failed", LAYER_DOWN)

    async def handle_send(self, content: dict) -> None:
        text = _text(content)
        params, model = self._params(content.get("params"))
        await turns.start(self.key, "send", params, text, model=model)

    async def handle_edit(self, content: dict) -> None:
        message_id, text = _message_id(content), _text(content)
        params, model = self._params(content.get("params"))
        await turns.start(self.key, "edit", params, text, message_id=message_id, model=model)

    async def handle_switch(self, content: dict) -> None:
        await turns.switch(self.key, _message_id(content))

    async def handle_regenerate(self, content: dict) -> None:
        params, model = self._params(content.get("params"))
        await turns.start(self.key, "regenerate", params, model=model)

    async def handle_continue(self, content: dict) -> None:
        params, model = self._params(content.get("params"))
        if model is not None:
            raise Refused("invalid", "A reply is continued by the model that wrote it.")
        await turns.start(self.key, "continue", params)

    async def handle_stop(self, content: dict) -> None:
        if not await turns.stop(self.key):
            raise Refused("invalid", "No reply is being generated.")

    def _params(self, raw) -> tuple[GenerationParams, str | None]:
        """The conversation's parameters overridden by the frame's, and the model it names (if it does).

        Raises Refused if they are invalid; whether the user may use the model
        is the turn's to check (conversations.live.turns).
        """
        if raw is not None and not isinstance(raw, dict):
            raise Refused("invalid", "params must be an object")
        raw = dict(raw or {})
        model = raw.pop("model", None)
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise Refused("invalid", "model must be a model's id (a string)")
        conversation = self.conversation
        assert conversation is not None  # frames arrive only on a socket accepted for its conversation
        try:
            base = GenerationParams.from_dict(conversation.params())
            params = GenerationParams.from_dict(raw or {}, base=base)
        except InvalidParams as exc:
            raise Refused("invalid", str(exc)) from None
        conversation.set_params(params.to_dict())
        return params, model

    async def send_error(self, code: str, message: str) -> None:
        await self.send_json({"type": "error", "code": code, "message": message})

    # Group events, one method per event type (chat.token -> chat_token).

    async def chat_message(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_start(self, event: dict) -> None:
        if event["message_id"] in self.sent:
            return  # the snapshot on connect already started it here
        # A continued reply's tokens extend the text its `start` carries.
        self.sent[event["message_id"]] = len(event.get("content", ""))
        await self.send_json(client_frame(event))

    async def chat_path(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_title(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_summary(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_queued(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_error(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_feedback(self, event: dict) -> None:
        await self.send_json(client_frame(event))

    async def chat_token(self, event: dict) -> None:
        message_id, offset, text = event["message_id"], event["offset"], event["text"]
        already = self.sent.get(message_id)
        # Not started here, or a gap (an event lost): the `end` brings the text instead.
        if already is None or offset > already or offset + len(text) <= already:
            return
        self.sent[message_id] = offset + len(text)
        await self.send_json({"type": "token", "message_id": message_id, "text": text[already - offset :]})

    async def chat_end(self, event: dict) -> None:
        """The reply's `end`; text this socket missed goes out first, so it has sent the stored text."""
        frame, content = event["frame"], event["content"]
        message_id = frame["message_id"]
        already = self.sent.pop(message_id, None)
        if already is None:
            await self.send_json({"type": "start", "message_id": message_id, "content": content})
        elif len(content) > already:
            await self.send_json({"type": "token", "message_id": message_id, "text": content[already:]})
        await self.send_json(frame)

    async def chat_logout(self, event: dict) -> None:
        """The session this socket was opened with logged out: it may not send another frame."""
        if event["session_key"] == self.session_key:
            await self.close(code=CLOSE_UNAUTHENTICATED)

    async def chat_shutdown(self, event: dict) -> None:
        """The server is stopping; every `end` this socket was owed came before this event."""
        await self.close(code=CLOSE_RESTART)
        self.closed.set()

    # Database work, off the event loop.

    @database_sync_to_async
    def _get_conversation(self, user, conversation_id) -> Conversation | None:
        return Conversation.objects.for_user(user).filter(id=conversation_id).first()

    async def _seen(self) -> None:
        """A temporary chat open in a tab, or just closed, is not due for the sweep (conversations.live.sweep)."""
        if self.conversation is None or not self.conversation.temporary:
            return
        try:
            await database_sync_to_async(sweep.seen)(self.key)
        except DatabaseError as exc:  # each sweep marks the chats open here anyway
            logger.warning("cannot mark %s seen: %s", self.key, exc)


def logged_out(sender, request, user, **kwargs) -> None:
    """`user_logged_out`: close the chat sockets of the session that logged out (conversations.apps connects it).

    Sent before Django flushes the session, so its key is still the socket's.
    Other sessions of the same user (another browser) stay open.
    """
    if user is None or request.session.session_key is None:
        return
    event = {"type": "chat.logout", "session_key": request.session.session_key}
    try:
        async_to_sync(get_channel_layer().group_send)(user_group(user.pk), event)
    except layer_errors() as exc:
        logger.warning("cannot close the sockets of a logged-out session: %s", exc)


def _text(content: dict) -> str:
    """The frame's message text; Refused when empty, too long or not storable (conversations.models.unstorable)."""
    text = content.get("content")
    if not isinstance(text, str) or not text.strip():
        raise Refused("invalid", "A message needs some text.")
    if len(text) > settings.CHAT_MAX_MESSAGE_CHARS:
        raise Refused("invalid", f"A message can have at most {settings.CHAT_MAX_MESSAGE_CHARS} characters.")
    problem = unstorable(text)
    if problem:
        raise Refused("invalid", f"A message {problem}.")
    return text


def _message_id(content: dict) -> int:
    message_id = content.get("message_id")
    if not isinstance(message_id, int) or isinstance(message_id, bool):
        raise Refused("invalid", "message_id must be a message's id (an integer).")
    return message_id
