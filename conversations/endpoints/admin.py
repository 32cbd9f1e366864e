"""The admin of models: endpoints staff add (their key write-only), and how each model is offered.

Imported by conversations.admin, so the admin's autodiscovery registers it.
"""

from __future__ import annotations

from django import forms
from django.contrib import admin

from ..live import state
from ..models import Endpoint, ModelOption


class EndpointForm(forms.ModelForm):
    """The key is never shown back: left empty on a change, the stored one stays."""

    url = forms.URLField(
        label="base URL",
        max_length=500,
        assume_scheme="http",
        help_text="Its OpenAI base URL, e.g. http://10.0.0.5:8000/v1",
    )
    api_key = forms.CharField(
        label="key",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="The bearer key sent to the endpoint. Not shown again; leave empty to keep the current one.",
    )

    class Meta:
        model = Endpoint
        fields = ("name", "url", "api_key", "enabled")

    def clean_api_key(self) -> str:
        key = self.cleaned_data.get("api_key") or ""
        return key or (self.instance.api_key if self.instance.pk else "")


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    """Endpoints beside CHAT_ENDPOINTS; each process picks a change up within a minute."""

    form = EndpointForm
    list_display = ("name", "url", "enabled", "has_key", "status", "models")
    list_filter = ("enabled",)
    search_fields = ("name", "url")

    @admin.display(description="key", boolean=True)
    def has_key(self, obj: Endpoint) -> bool:
        return bool(obj.api_key)

    @admin.display(description="status (this process)")
    def status(self, obj: Endpoint) -> str:
        return _seen(obj.name).get("status", "not asked yet")

    @admin.display(description="models")
    def models(self, obj: Endpoint) -> str:
        return ", ".join(_seen(obj.name).get("models", [])) or "—"


def _seen(name: str) -> dict:
    return state.current().models.health().get(name, {})


@admin.register(ModelOption)
class ModelOptionAdmin(admin.ModelAdmin):
    """Each model seen (the local one and the endpoints'): its name, who gets it, the default."""

    list_display = ("model_id", "display_name", "offered", "is_default", "group_names", "served_by", "context")
    list_editable = ("display_name", "offered", "is_default")
    list_filter = ("offered",)
    search_fields = ("model_id", "display_name")
    filter_horizontal = ("groups",)
    fields = ("model_id", "display_name", "offered", "is_default", "groups", "context_length")
    readonly_fields = ("model_id",)

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("groups")

    def has_add_permission(self, request) -> bool:
        return False  # a model appears when an endpoint (or the local engine) serves it

    @admin.display(description="groups")
    def group_names(self, obj: ModelOption) -> str:
        return ", ".join(group.name for group in obj.groups.all()) or "everyone"

    @admin.display(description="served by (this process)")
    def served_by(self, obj: ModelOption) -> str:
        models = state.current().models
        if obj.model_id == models.local_model:
            return "this site's model" + ("" if models.available(obj.model_id) else " (not ready)")
        serving = models.served().get(obj.model_id)
        return ", ".join(serving) if serving else "no endpoint up"

    @admin.display(description="context")
    def context(self, obj: ModelOption) -> int:
        return state.current().models.context_length(obj.model_id, obj.context_length)
