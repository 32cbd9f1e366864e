"""OpenAI-compatible endpoints staff add in the admin, and how each model is offered (conversations.endpoints)."""

from __future__ import annotations

from django.contrib.auth.models import Group
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q
from django.utils import timezone

endpoint_name = RegexValidator(r"^[a-z0-9_-]+$", "Use lower-case letters, digits, - and _.")


class Endpoint(models.Model):
    """An OpenAI-compatible server (llama.cpp's, vLLM, Ollama, another Chatsite), beside CHAT_ENDPOINTS.

    `api_key` is sent as the bearer key; the admin never shows it back.
    """

    name = models.CharField(max_length=50, unique=True, validators=[endpoint_name])
    url = models.URLField("base URL", max_length=500, help_text="Its OpenAI base URL, e.g. http://10.0.0.5:8000/v1")
    api_key = models.CharField("key", max_length=500, blank=True)
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ModelOptionQuerySet(models.QuerySet):
    def usable_by(self, user) -> ModelOptionQuerySet:
        """Offered models this user may use: those of no group are everyone's."""
        allowed = Q(groups__isnull=True) | Q(groups__in=user.groups.all())
        return self.filter(allowed, offered=True).distinct()


class ModelOption(models.Model):
    """How one model is offered, whoever serves it (the local engine or endpoints): made when first seen."""

    model_id = models.CharField("model", max_length=200, unique=True)
    display_name = models.CharField(max_length=200, blank=True)
    offered = models.BooleanField(default=True)
    is_default = models.BooleanField("default", default=False, help_text="The model of a new chat.")
    groups = models.ManyToManyField(
        Group, blank=True, related_name="model_options", help_text="Who may use it; nobody chosen: everyone."
    )
    context_length = models.PositiveIntegerField(
        null=True, blank=True, help_text="Tokens of context, where the endpoint does not say (default 4096)."
    )
    first_seen_at = models.DateTimeField(default=timezone.now, editable=False)

    objects = ModelOptionQuerySet.as_manager()

    class Meta:
        ordering = ["model_id"]
        constraints = [models.UniqueConstraint(fields=["is_default"], condition=Q(is_default=True), name="one_default")]

    def __str__(self) -> str:
        return self.name

    @property
    def name(self) -> str:
        return self.display_name or self.model_id

    def save(self, *args, **kwargs) -> None:
        if self.is_default:  # the default moves here
            ModelOption.objects.filter(is_default=True).exclude(pk=self.pk).update(is_default=False)
        super().save(*args, **kwargs)
