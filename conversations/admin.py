"""The admin where staff review transcripts, read-only, and every reading is recorded.

Transcripts (conversations and messages) cannot be added, changed or deleted
here; each time staff open or export one, a StaffRead row says who, when and
which (conversations.audit), and only superusers can read those rows. The
review queue, quotas and usage are in conversations/review/admin.py.
"""

from django.contrib import admin
from django.db.models import Count, Exists, OuterRef, Q, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponse
from django.utils.html import format_html, format_html_join
from django.utils.text import smart_split, unescape_string_literal

from .history import export
from .history.tree import Tree
from .models import ApiKey, Conversation, InferenceWorker, Message, PendingAccount, Share
from .review import audit

# The site's own name on every admin page (Django's says "Django administration").
admin.site.site_header = "Chatsite administration"
admin.site.site_title = "Chatsite admin"
admin.site.index_title = "Transcripts, review and usage"
# The app list beside every page took 300 px of a 1280 px screen from the review queue and the
# transcripts, which then scrolled sideways; the breadcrumbs and the index lead back to it.
admin.site.enable_nav_sidebar = False


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    ordering = ("created_at", "id")
    verbose_name_plural = "all messages, every branch (parent = the message each one follows)"
    fields = (
        "id",
        "parent",
        "created_at",
        "role",
        "model_name",
        "content",
        "status",
        "finish_reason",
        "prompt_tokens",
        "completion_tokens",
        "ttft_ms",
        "duration_ms",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class SharedFilter(admin.SimpleListFilter):
    """Chats with a live share link (conversations/shares/)."""

    title = "shared"
    parameter_name = "shared"

    def lookups(self, request, model_admin):
        return [("1", "Shared"), ("0", "Not shared")]

    def queryset(self, request, queryset):
        if self.value() in ("1", "0"):
            return queryset.filter(shared=self.value() == "1")
        return queryset


# What a transcript's page shows above it, read-only.
HEAD_FIELDS = (
    "id",
    "title",
    "user",
    "source",
    "model_name",
    "assistant",
    "created_at",
    "updated_at",
    "system_prompt",
)


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = (
        "display_title",
        "user",
        "message_count",
        "source",
        "model_name",
        "assistant",
        "is_shared",
        "created_at",
        "updated_at",
    )
    list_filter = ("source", "temporary", SharedFilter, "user", "created_at")
    list_select_related = ("user", "assistant")
    search_fields = ("title", "messages__content", "user__username")
    date_hierarchy = "created_at"
    inlines = [MessageInline]
    actions = ["export_json", "export_markdown"]
    readonly_fields = (*HEAD_FIELDS, "active_path")
    fieldsets = (
        (
            None,
            {"fields": HEAD_FIELDS},
        ),
        ("Transcript (the active path; every branch is in the messages below)", {"fields": ("active_path",)}),
        (
            "Generation parameters",
            {
                "classes": ("collapse",),
                "fields": ("temperature", "top_p", "max_new_tokens", "repetition_penalty"),
            },
        ),
    )

    def get_queryset(self, request):
        # A subquery per listed row, not a join: joined, the count and a search
        # over messages multiplied one big chat's rows by themselves (N²).
        count = Message.objects.filter(conversation=OuterRef("pk")).order_by().values("conversation")
        count = count.annotate(n=Count("id")).values("n")
        shared = Exists(Share.objects.filter(conversation=OuterRef("pk")))
        return super().get_queryset(request).annotate(_message_count=Coalesce(Subquery(count), 0), shared=shared)

    def get_search_results(self, request, queryset, search_term):
        """Each word in the title, the owner's name or any message; messages through EXISTS (no join, no DISTINCT)."""
        for word in smart_split(search_term):
            if word.startswith(('"', "'")) and word[0] == word[-1]:
                word = unescape_string_literal(word)  # "a phrase" in quotes, as the admin's own search
            in_messages = Message.objects.filter(conversation=OuterRef("pk"), content__icontains=word)
            queryset = queryset.filter(
                Q(title__icontains=word) | Q(user__username__icontains=word) | Exists(in_messages)
            )
        return queryset, False

    def get_readonly_fields(self, request, obj=None):
        # Transcripts are evidence: staff read them, nobody edits them here.
        return self.readonly_fields + ("temperature", "top_p", "max_new_tokens", "repetition_penalty")

    def has_add_permission(self, request) -> bool:
        return False

    @admin.display(description="active path")
    def active_path(self, obj: Conversation) -> str:
        tree = Tree.of(obj)
        rows = []
        for message in tree.path():
            siblings = tree.siblings(message)
            variant = f"{siblings.index(message.id) + 1} / {len(siblings)}: #{', #'.join(map(str, siblings))}"
            rows.append((message.id, message.role, variant if len(siblings) > 1 else "", message.content))
        if not rows:
            return "(no messages)"
        body = format_html_join("", "<tr><td>#{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows)
        return format_html(
            "<table><thead><tr><th>id</th><th>role</th><th>variants</th><th>content</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            body,
        )

    def has_change_permission(self, request, obj=None) -> bool:
        return False  # the change form shows the transcript read-only, with no Save

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    def change_view(self, request, object_id, form_url="", extra_context=None):
        response = super().change_view(request, object_id, form_url, extra_context)
        if response.status_code == 200:  # the transcript was shown, whatever the method
            audit.record(request, audit.VIEW, Conversation.objects.filter(pk=object_id))
        return response

    @admin.display(description="title", ordering="title")
    def display_title(self, obj: Conversation) -> str:
        return obj.display_title

    @admin.display(description="shared", boolean=True, ordering="shared")
    def is_shared(self, obj: Conversation) -> bool:
        return obj.is_shared

    @admin.display(description="messages", ordering="_message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj._message_count

    @admin.action(description="Export selected conversations as JSON")
    def export_json(self, request, queryset):
        # Temporary chats are never exported; export.as_json reads each one's messages.
        conversations = list(queryset.filter(temporary=False).select_related("user"))
        audit.record(request, audit.EXPORT_JSON, conversations)
        response = HttpResponse(export.to_json(conversations), content_type="application/json")
        response["Content-Disposition"] = 'attachment; filename="conversations.json"'
        return response

    @admin.action(description="Export selected conversations as Markdown")
    def export_markdown(self, request, queryset):
        conversations = list(queryset.filter(temporary=False).select_related("user").prefetch_related("messages"))
        audit.record(request, audit.EXPORT_MARKDOWN, conversations)
        text = "\n---\n\n".join(export.to_markdown(c) for c in conversations)
        response = HttpResponse(text, content_type="text/markdown; charset=utf-8")
        response["Content-Disposition"] = 'attachment; filename="conversations.md"'
        return response


@admin.register(PendingAccount)
class PendingAccountAdmin(admin.ModelAdmin):
    """Who waits for approval (CHATSITE_SIGNUP=approval); approving lets them in."""

    list_display = ("user", "signed_up_at")
    list_select_related = ("user",)
    search_fields = ("user__username",)
    actions = ["approve"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # "delete" would read as deleting the accounts
        return actions

    @admin.action(description="Approve the selected accounts")
    def approve(self, request, queryset):
        names = [pending.user.get_username() for pending in queryset.select_related("user")]
        queryset.delete()
        self.message_user(request, f"Approved: {', '.join(names)}.")


@admin.register(InferenceWorker)
class InferenceWorkerAdmin(admin.ModelAdmin):
    """Read-only: the workers write these rows themselves."""

    list_display = ("name", "host", "pid", "model_name", "device", "dtype", "active_replies", "started_at", "last_seen")
    search_fields = ("name", "host")
    readonly_fields = list_display

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    """Keys are listed (never shown: only their hash is kept); staff can revoke one by setting revoked_at."""

    list_display = ("name", "user", "prefix", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "prefix", "user__username")
    fields = ("user", "name", "prefix", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("user", "name", "prefix", "created_at", "last_used_at")

    def has_add_permission(self, request) -> bool:
        return False


from .assistants import admin as assistants_admin  # noqa: E402, F401  (registers assistants)
from .endpoints import admin as endpoints_admin  # noqa: E402, F401  (registers endpoints and models)
from .review import admin as review_admin  # noqa: E402, F401  (registers the review queue, quotas, usage and audit)
