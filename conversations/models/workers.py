"""Inference worker processes as they report themselves (CHAT_INFERENCE=worker)."""

from __future__ import annotations

from datetime import timedelta

from django.db import models
from django.utils import timezone


class InferenceWorker(models.Model):
    """An inference worker process (CHAT_INFERENCE=worker), as it last reported itself.

    Each worker upserts its row every few seconds; /healthz and the admin read
    them. A row whose `last_seen` is old belongs to a worker that stopped.
    """

    name = models.CharField(max_length=200, unique=True)
    host = models.CharField(max_length=200)
    pid = models.PositiveIntegerField()
    model_name = models.CharField(max_length=200, blank=True)
    device = models.CharField(max_length=40, blank=True)
    dtype = models.CharField(max_length=40, blank=True)
    started_at = models.DateTimeField(default=timezone.now)
    last_seen = models.DateTimeField(default=timezone.now)
    active_replies = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-last_seen"]

    def __str__(self) -> str:
        return self.name

    @classmethod
    def seen_since(cls, seconds: float) -> models.QuerySet:
        """Workers that reported within the last `seconds`."""
        return cls.objects.filter(last_seen__gte=timezone.now() - timedelta(seconds=seconds))
