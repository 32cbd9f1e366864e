"""API keys of the OpenAI-compatible API (conversations.api.keys makes and checks them)."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiKeyQuerySet(models.QuerySet):
    def for_user(self, user) -> ApiKeyQuerySet:
        if not user.is_authenticated:
            return self.none()
        return self.filter(user=user)

    def active(self) -> ApiKeyQuerySet:
        return self.filter(revoked_at__isnull=True)


class ApiKey(models.Model):
    """A user's named key for the OpenAI-compatible API (conversations.api.keys makes and checks them).

    Only a SHA-256 of the key is stored: the key is 256 random bits, so a fast
    unsalted hash is as good as a slow one and lets a request be checked
    cheaply. `prefix` (shown in lists) finds the candidate rows.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_keys")
    name = models.CharField(max_length=100)
    prefix = models.CharField(max_length=16, db_index=True)
    key_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiKeyQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"
