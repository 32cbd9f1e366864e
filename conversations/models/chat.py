"""Conversations and their messages: the transcript users and staff read."""

from __future__ import annotations

import uuid

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import models
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from ..history.tree import Tree

TITLE_LENGTH = 60
PARAM_FIELDS = ("temperature", "top_p", "max_new_tokens", "repetition_penalty")


def unstorable(text: str) -> str | None:
    """Why a text cannot be stored as it is, or None when it can.

    JSON can carry lone surrogates ("\\ud800"), which no database encodes
    (SQLite's driver raises UnicodeEncodeError, an HTTP 500 if unchecked),
    and NUL, which PostgreSQL refuses; every place that stores user text
    checks it here first and refuses it as bad input.
    """
    if "\x00" in text:
        return "must not contain NUL characters"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode text (no lone surrogates)"
    return None


class ConversationQuerySet(models.QuerySet):
    def for_user(self, user) -> ConversationQuerySet:
        """Only `user`'s conversations: a foreign id then simply is not found, nor is a deleted one
        (kept a while for Undo, conversations.live.sweep)."""
        if not user.is_authenticated:
            return self.none()
        return self.filter(user=user, deleted_at__isnull=True)


class Conversation(models.Model):
    class Source(models.TextChoices):
        WEB = "web"
        BATCH = "batch"
        API = "api"
        IMPORT = "import"

    class TitleSource(models.TextChoices):
        NONE = "", "none, or imported"
        FIRST_LINE = "first_line", "its first message"
        MODEL = "model", "its model"
        USER = "user", "its user"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="conversations")
    title = models.CharField(max_length=200, blank=True)
    # Who named it: the model may replace only a title its first message gave (conversations.live.titles).
    title_source = models.CharField(max_length=10, choices=TitleSource.choices, blank=True, default="", editable=False)
    system_prompt = models.TextField(blank=True)
    temperature = models.FloatField(default=0.7)
    top_p = models.FloatField(default=0.9)
    max_new_tokens = models.PositiveIntegerField(default=1024)
    repetition_penalty = models.FloatField(default=1.05)
    model_name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.WEB)
    # Archived chats leave the default list; pinned ones lead it.
    archived = models.BooleanField(default=False)
    pinned = models.BooleanField(default=False)
    # Never listed, searched or exported; deleted once no tab has had it open for
    # CHAT_TEMPORARY_GRACE_S (`seen_at`: when one last had), by conversations.live.sweep.
    temporary = models.BooleanField(default=False, editable=False)
    seen_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Deleted by its user: out of every user-facing view at once, and removed
    # for good CHAT_DELETE_UNDO_S later unless they undo it.
    deleted_at = models.DateTimeField(null=True, blank=True, editable=False, db_index=True)
    # The assistant it started from (its system prompt, parameters and model were copied).
    assistant = models.ForeignKey(
        "Assistant", models.SET_NULL, null=True, blank=True, related_name="conversations", editable=False
    )
    # The end of the active path through the message tree (conversations.history.tree):
    # pages, the API and the model's history follow it up to the root.
    active_leaf = models.ForeignKey("Message", models.SET_NULL, null=True, blank=True, related_name="+", editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = ConversationQuerySet.as_manager()

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            models.Index(fields=["user", "-updated_at"], name="conv_user_recent"),
            # The paged list's sort key (conversations/history/listing.py), so a page
            # is an index range however long the history gets.
            models.Index(fields=["user", "archived", "-pinned", "-updated_at", "-id"], name="conv_user_list"),
            # The sweep's question, every few seconds: which temporary chats nobody has had open.
            models.Index(fields=["seen_at"], condition=Q(temporary=True), name="conv_temporary_seen"),
        ]
        # On PostgreSQL, migration 0003_conversation_list adds a GIN full-text
        # index on titles (SQLite has no GIN); messages: see Message.Meta.

    def __str__(self) -> str:
        return self.display_title

    @property
    def display_title(self) -> str:
        return self.title or "New chat"

    def get_absolute_url(self) -> str:
        return reverse("conversation", args=[self.id])

    def params(self) -> dict:
        """The conversation's generation parameters, as the inference app takes them."""
        return {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "max_new_tokens": self.max_new_tokens,
            "repetition_penalty": self.repetition_penalty,
        }

    def set_params(self, params: dict) -> None:
        """Copy validated parameters onto the conversation (not saved)."""
        for name in PARAM_FIELDS:
            if name in params:
                setattr(self, name, params[name])

    def prompt_path(self, until: Message | None = None, tree: Tree | None = None) -> list[Message]:
        """The messages the model reads, oldest first: the path down to `until` (excluded), else the active path.

        Only finished text counts: empty or failed replies are left out, so a
        failure does not teach the model to answer with nothing.
        `tree`: the conversation's messages, where the caller has them loaded.
        """
        return [
            message
            for message in (tree or Tree.of(self)).path(until)
            if message.role != Message.Role.SYSTEM
            and not (
                message.role == Message.Role.ASSISTANT
                and (message.status == Message.Status.ERROR or not message.content)
            )
        ]

    def prompt_history(
        self, until: Message | None = None, tree: Tree | None = None, path: list[Message] | None = None
    ) -> list[dict]:
        """The transcript as chat messages for the model: the system prompt, then prompt_path()
        (`path`, where the caller has it)."""
        history = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        path = self.prompt_path(until, tree) if path is None else path
        return history + [{"role": message.role, "content": message.content} for message in path]

    def title_from(self, text: str) -> str:
        """A short title from the first user message: its first line, cut at a word."""
        line = " ".join(text.split())
        if len(line) <= TITLE_LENGTH:
            return line
        cut = line[:TITLE_LENGTH].rsplit(" ", 1)[0] or line[:TITLE_LENGTH]
        return cut.rstrip(",.;:") + "…"

    def start_turn(
        self, params: dict, first_text: str | None = None, model: str | None = None, leaf: Message | None = None
    ) -> None:
        """Record a new turn: the parameters and the model it used become the
        conversation's (so a reload shows them), the first message names it,
        it moves to the top of the list, and its reply (`leaf`) ends the active path."""
        self.set_params(params)
        if first_text and not self.title:
            self.title, self.title_source = self.title_from(first_text), self.TitleSource.FIRST_LINE
        self.model_name = model or self.model_name
        self.updated_at = timezone.now()
        fields = ["updated_at", "title", "title_source", "model_name", *PARAM_FIELDS]
        if leaf is not None:
            self.active_leaf = leaf
            fields.append("active_leaf")
        self.save(update_fields=fields)

    def append(self, role: str, content: str = "", **fields) -> Message:
        """A new message at the end of the active path, which it then ends."""
        leaf = self.messages.filter(id=self.active_leaf_id).first() if self.active_leaf_id else None
        message = Message.objects.create(conversation=self, role=role, content=content, parent=leaf, **fields)
        self.activate(message)
        return message

    def activate(self, leaf: Message) -> None:
        """Make the path to `leaf` the active one."""
        self.active_leaf = leaf
        Conversation.objects.filter(id=self.id).update(active_leaf=leaf)

    def live_reply(self) -> Message | None:
        return self.messages.filter(status=Message.Status.STREAMING).last()

    @property
    def is_shared(self) -> bool:
        """Whether a share link to it is live; lists annotate it (`shared`) rather than ask each row."""
        annotated = getattr(self, "shared", None)
        return annotated if annotated is not None else self.shares.exists()

    def as_dict(self) -> dict:
        return {
            "id": str(self.id),
            "title": self.display_title,
            "system_prompt": self.system_prompt,
            "params": self.params(),
            "model_name": self.model_name,
            "source": self.source,
            "archived": self.archived,
            "pinned": self.pinned,
            "temporary": self.temporary,
            "shared": self.is_shared,
            "assistant": {"id": self.assistant.id, "name": self.assistant.name} if self.assistant else None,
            "created_at": self.created_at.isoformat(),
            "updated_at": self.updated_at.isoformat(),
        }


class Message(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        USER = "user"
        ASSISTANT = "assistant"

    class Status(models.TextChoices):
        STREAMING = "streaming"
        COMPLETE = "complete"
        CANCELLED = "cancelled"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    class FinishReason(models.TextChoices):
        NONE = "", "—"
        STOP = "stop"
        LENGTH = "length"
        CANCELLED = "cancelled"
        ERROR = "error"
        INTERRUPTED = "interrupted"

    conversation = models.ForeignKey(Conversation, models.CASCADE, related_name="messages")
    # The message this one answers or follows (null for the first): messages form a tree, so editing
    # or regenerating adds a sibling and loses nothing.
    parent = models.ForeignKey("self", models.CASCADE, null=True, blank=True, related_name="children")
    role = models.CharField(max_length=10, choices=Role.choices)
    content = models.TextField(blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.COMPLETE)
    finish_reason = models.CharField(max_length=12, choices=FinishReason.choices, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField(null=True, blank=True)
    completion_tokens = models.PositiveIntegerField(null=True, blank=True)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(null=True, blank=True)
    model_name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [
            models.Index(fields=["conversation", "created_at", "id"], name="msg_conv_order"),
            models.Index(fields=["status"], name="msg_streaming", condition=Q(status="streaming")),
        ]
        # On PostgreSQL, migration 0007_message_search_vector adds a stored
        # generated column, search_vector (the content's tsvector, for search:
        # conversations/history/search.py), and its GIN index. It is no field here:
        # SQLite has no tsvector, and no other query needs it.

    def __str__(self) -> str:
        return f"{self.role}: {self.content[:40]}"

    @property
    def tokens_per_s(self) -> float | None:
        if not self.completion_tokens or not self.duration_ms:
            return None
        generating_ms = max(self.duration_ms - (self.ttft_ms or 0), 1)
        return round(self.completion_tokens * 1000 / generating_ms, 1)

    # What a reply spent, as the engine reports it and a reply's end stores it
    # (conversations.live.replies); the one list of these fields.
    USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms")

    # Finish reasons map onto statuses: a stopped reply is kept as cancelled,
    # a failed one as error; anything the model ended itself is complete.
    STATUS_FOR_REASON = {
        "stop": Status.COMPLETE,
        "length": Status.COMPLETE,
        "cancelled": Status.CANCELLED,
        "error": Status.ERROR,
        "interrupted": Status.INTERRUPTED,
    }

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "role": self.role,
            "content": self.content,
            "status": self.status,
            "finish_reason": self.finish_reason,
            **{name: getattr(self, name) for name in self.USAGE_FIELDS},
            "tokens_per_s": self.tokens_per_s,
            "model_name": self.model_name,
            "created_at": self.created_at.isoformat(),
            "feedback": self.feedback_dict(),
        }

    def feedback_dict(self) -> dict | None:
        """The user's rating of this reply ({"rating", "comment"}), or None (always for user messages)."""
        if self.role != self.Role.ASSISTANT:
            return None
        try:
            return self.feedback.as_dict()
        except ObjectDoesNotExist:
            return None

    @classmethod
    def interrupt_streaming(cls) -> int:
        """Mark replies left `streaming` by a stopped server as interrupted.

        Returns how many were marked. Called at start-up, when no reply of
        this process can be live yet.
        """
        return cls.objects.filter(status=cls.Status.STREAMING).update(
            status=cls.Status.INTERRUPTED, finish_reason=cls.FinishReason.INTERRUPTED
        )
