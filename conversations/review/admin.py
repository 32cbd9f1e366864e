"""The admin's review queue, quotas, usage page and the audit of staff reading (issue 13).

Imported by conversations.admin, so the admin's autodiscovery registers it.
"""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.http import HttpResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from ..models import Conversation, DailyUsage, Feedback, GroupQuota, QuotaOverride, StaffRead
from . import audit, quotas
from . import feedback as review

USAGE_CHART_DAYS = 14
CHART_HEIGHT = 120  # px of the tallest bar
BAR_WIDTH, BAR_GAP = 28, 12


@admin.register(Feedback)
class FeedbackAdmin(admin.ModelAdmin):
    """The review queue: thumbs down first (Feedback.Meta.ordering), each with its comment and context."""

    list_display = ("rating_mark", "reply_excerpt", "comment", "user", "updated_at", "reviewed")
    list_display_links = ("rating_mark", "reply_excerpt")
    list_filter = ("rating", "reviewed", ("user", admin.RelatedOnlyFieldListFilter), "updated_at")
    list_select_related = ("user", "message")
    search_fields = ("comment", "staff_note", "message__content", "user__username")
    date_hierarchy = "updated_at"
    actions = ["export_jsonl"]
    fields = ("rating", "comment", "user", "conversation_link", "context", "reviewed", "staff_note", "reviewed_by")

    class Media:
        css = {"all": ["review/review.css"]}

    readonly_fields = ("rating", "comment", "user", "conversation_link", "context", "reviewed_by")

    def has_add_permission(self, request) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # the user's rating is theirs; staff mark it reviewed instead

    def save_model(self, request, obj: Feedback, form, change) -> None:
        if "reviewed" in form.changed_data:
            obj.reviewed_by, obj.reviewed_at = (request.user, timezone.now()) if obj.reviewed else (None, None)
        super().save_model(request, obj, form, change)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        # Any page that shows the turns is a reading: a GET, or a POST whose form
        # was invalid and came back with them (a valid one redirects).
        if response.status_code == 200:
            conversations = Conversation.objects.filter(messages__feedback__pk=object_id).select_related("user")
            audit.record(request, audit.REVIEW, conversations)
        return response

    @admin.display(description="rating", ordering="rating")
    def rating_mark(self, obj: Feedback) -> str:
        return obj.get_rating_display()

    @admin.display(description="reply")
    def reply_excerpt(self, obj: Feedback) -> str:
        text = " ".join(obj.message.content.split())
        return text[:80] + ("…" if len(text) > 80 else "")

    @admin.display(description="conversation")
    def conversation_link(self, obj: Feedback) -> str:
        url = reverse("admin:conversations_conversation_change", args=[obj.message.conversation_id])
        return format_html('<a href="{}">{}</a>', url, obj.message.conversation.display_title)

    @admin.display(description="the turns around it")
    def context(self, obj: Feedback) -> str:
        rows = (
            (
                "rated" if message.pk == obj.message_id else "",
                message.role + (" (rated)" if message.pk == obj.message_id else ""),
                message.content,
            )
            for message in review.around(obj)
        )
        return format_html(
            '<table class="review-context">{}</table>',
            format_html_join("", '<tr class="{}"><th>{}</th><td><pre>{}</pre></td></tr>', rows),
        )

    @admin.action(description="Export selected ratings as JSON Lines")
    def export_jsonl(self, request, queryset):
        exported = queryset.filter(message__conversation__temporary=False)  # temporary chats never are
        feedback = list(exported.select_related("message__conversation__user"))
        audit.record(request, audit.EXPORT_FEEDBACK, [f.message.conversation for f in feedback])
        response = HttpResponse(review.to_jsonl(feedback), content_type="application/jsonl; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="feedback.jsonl"'
        return response


@admin.register(QuotaOverride)
class QuotaOverrideAdmin(admin.ModelAdmin):
    """A user's own daily token budget; without one, CHAT_USER_DAILY_TOKENS applies."""

    list_display = ("user", "daily_tokens", "used_today", "note")
    search_fields = ("user__username", "note")
    raw_id_fields = ("user",)

    @admin.display(description="used today (UTC)")
    def used_today(self, obj: QuotaOverride) -> int:
        return quotas.status(obj.user_id)["used"]


@admin.register(GroupQuota)
class GroupQuotaAdmin(admin.ModelAdmin):
    """A group's daily token budget per user; a user gets the largest of their groups', unless overridden."""

    list_display = ("group", "daily_tokens", "note")
    search_fields = ("group__name", "note")


@admin.register(DailyUsage)
class DailyUsageAdmin(admin.ModelAdmin):
    """Tokens per user per UTC day, with a chart of replies, tokens and tokens/s per day above the list."""

    change_list_template = "admin/conversations/dailyusage/change_list.html"
    list_display = ("day", "user", "tokens", "reserved", "replies")
    list_filter = ("day", ("user", admin.RelatedOnlyFieldListFilter))
    list_select_related = ("user",)
    search_fields = ("user__username",)
    date_hierarchy = "day"

    class Media:
        css = {"all": ["review/review.css"]}

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # counted by conversations.review.quotas only

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def changelist_view(self, request, extra_context=None):
        since = timezone.now() - timedelta(days=USAGE_CHART_DAYS - 1)
        days = review.daily_usage(since.replace(hour=0, minute=0, second=0, microsecond=0))
        context = {
            "usage_days": days,
            "usage_chart": chart(days),
            "chart_days": USAGE_CHART_DAYS,
            "usage_groups": review.usage_by_group(quotas.today()),
        }
        return super().changelist_view(request, {**(extra_context or {}), **context})


def chart(days: list[review.Day]) -> dict:
    """Bar geometry for the server-rendered SVG of tokens per day (no script, no inline style: CSP)."""
    peak = max((d.tokens for d in days), default=0) or 1
    bars = []
    for index, day in enumerate(days):
        height = max(round(day.tokens * CHART_HEIGHT / peak), 1 if day.tokens else 0)
        x = index * (BAR_WIDTH + BAR_GAP) + BAR_GAP
        bars.append(
            {"day": day, "x": x, "y": CHART_HEIGHT - height + 20, "height": height, "label_x": x + BAR_WIDTH / 2}
        )
    width = max(len(days), 1) * (BAR_WIDTH + BAR_GAP) + BAR_GAP
    return {
        "bars": bars,
        "width": width,
        "height": CHART_HEIGHT + 60,
        "bar_width": BAR_WIDTH,
        "base": CHART_HEIGHT + 20,
    }


@admin.register(StaffRead)
class StaffReadAdmin(admin.ModelAdmin):
    """The audit of staff reading: superusers read it; nobody adds, changes or deletes a row here."""

    list_display = ("at", "staff_name", "action", "conversation_title", "owner", "conversation_id")
    list_filter = ("action", "staff_name", "at")
    search_fields = ("staff_name", "owner", "conversation_title", "conversation_id")
    date_hierarchy = "at"
    actions = None

    def has_module_permission(self, request) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.is_active and request.user.is_superuser

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
