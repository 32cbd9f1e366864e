"""Share links: a read-only snapshot of a conversation's active path (conversations/shares/, docs/history.md)."""

from __future__ import annotations

import secrets

from django.db import models
from django.utils import timezone


def new_token() -> str:
    return secrets.token_urlsafe(24)


class Share(models.Model):
    """The path as it was when shared: later turns, other branches and the owner's other chats are not in it.
    Deleting the row revokes the link."""

    token = models.CharField(max_length=64, unique=True, default=new_token, editable=False)
    conversation = models.ForeignKey("Conversation", models.CASCADE, related_name="shares")
    title = models.CharField(max_length=200)
    messages = models.JSONField(default=list)  # [{"id", "role", "content", "status", "model_name", "created_at"}]
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.title

    def get_absolute_url(self) -> str:
        return f"/s/{self.token}/"
