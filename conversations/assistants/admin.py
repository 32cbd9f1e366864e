"""Assistants in the admin: staff share one with groups or everyone (docs/assistants.md)."""

from django.contrib import admin

from ..models import Assistant


@admin.register(Assistant)
class AssistantAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "model_name", "everyone", "created_at")
    list_filter = ("everyone", "groups")
    list_select_related = ("owner",)
    search_fields = ("name", "owner__username")
    filter_horizontal = ("groups",)
    raw_id_fields = ("owner",)
