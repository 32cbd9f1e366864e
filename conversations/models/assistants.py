"""Assistants: a named system prompt with parameters and a model, that a new chat starts from (docs/assistants.md)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.db.models import Q
from django.utils import timezone


class AssistantQuerySet(models.QuerySet):
    def usable_by(self, user) -> AssistantQuerySet:
        """The user's own assistants and those staff shared with everyone or with one of their groups."""
        if not user.is_authenticated:
            return self.none()
        shared = Q(everyone=True) | Q(groups__in=user.groups.all())
        return self.filter(Q(owner=user) | shared).distinct()


class Assistant(models.Model):
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="assistants")
    name = models.CharField(max_length=100)
    system_prompt = models.TextField(blank=True)
    # The parameters it sets (inference.GenerationParams' keys); the rest are the defaults.
    params = models.JSONField(default=dict, blank=True)
    # Its model's id; empty: the site's default model.
    model_name = models.CharField("model", max_length=200, blank=True)
    # Shared by staff (in the admin): with everyone, or with the users of these groups.
    everyone = models.BooleanField("shared with everyone", default=False)
    groups = models.ManyToManyField(Group, blank=True, related_name="assistants", help_text="Shared with these groups.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = AssistantQuerySet.as_manager()

    class Meta:
        ordering = ["name", "id"]

    def __str__(self) -> str:
        return self.name

    @property
    def shared(self) -> bool:
        return self.everyone or self.groups.exists()

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "system_prompt": self.system_prompt,
            "params": self.params,
            "model": self.model_name or None,
            "shared": self.shared,
        }
