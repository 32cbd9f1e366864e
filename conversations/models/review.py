"""Feedback on replies, daily token quotas and the audit of staff reading (conversations.review)."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models
from django.utils import timezone

from .chat import Message


class Feedback(models.Model):
    """A user's thumbs up (1) or down (-1) on one of their assistant replies, and what staff made of it.

    conversations.review.feedback owns the rules (who may rate what, the queue order).
    """

    class Rating(models.IntegerChoices):
        UP = 1, "thumbs up"
        DOWN = -1, "thumbs down"

    message = models.OneToOneField(Message, models.CASCADE, related_name="feedback")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="feedback")
    rating = models.SmallIntegerField(choices=Rating.choices)
    comment = models.TextField(blank=True, max_length=2000)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    reviewed = models.BooleanField(default=False)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, models.SET_NULL, null=True, blank=True, related_name="+", editable=False
    )
    reviewed_at = models.DateTimeField(null=True, blank=True, editable=False)
    staff_note = models.TextField(blank=True)

    class Meta:
        verbose_name = "rated reply"
        verbose_name_plural = "review queue"
        # The queue: thumbs down first, the unreviewed before the reviewed, newest first.
        ordering = ["rating", "reviewed", "-updated_at", "-id"]
        indexes = [models.Index(fields=["rating", "reviewed", "-updated_at"], name="feedback_queue")]

    def __str__(self) -> str:
        return f"{self.get_rating_display()} on reply {self.message_id}"

    def as_dict(self) -> dict:
        return {"rating": self.rating, "comment": self.comment}


class QuotaOverride(models.Model):
    """A user's own daily token budget, replacing CHAT_USER_DAILY_TOKENS (0 = no limit)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, related_name="quota_override")
    daily_tokens = models.PositiveIntegerField(help_text="prompt + completion tokens per UTC day; 0 = no limit")
    note = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.user}: {self.daily_tokens or 'no limit'}"


class GroupQuota(models.Model):
    """A group's daily token budget for each of its users: a user gets the largest of their groups' (0 = no
    limit), unless they have a QuotaOverride of their own."""

    group = models.OneToOneField(Group, models.CASCADE, primary_key=True, related_name="quota")
    daily_tokens = models.PositiveIntegerField(
        help_text="prompt + completion tokens per UTC day, per user; 0 = no limit"
    )
    note = models.CharField(max_length=200, blank=True)

    def __str__(self) -> str:
        return f"{self.group}: {self.daily_tokens or 'no limit'}"


class DailyUsage(models.Model):
    """A user's tokens on one UTC day, over the web, the API and batch_prompts (conversations.review.quotas).

    `tokens` is what finished replies spent; `reserved` is held for replies
    still running (their prompt and max_new_tokens), so simultaneous turns
    see each other before they end.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="daily_usage")
    day = models.DateField()
    tokens = models.PositiveBigIntegerField(default=0)
    reserved = models.PositiveBigIntegerField(default=0)
    replies = models.PositiveIntegerField(default=0)

    class Meta:
        verbose_name_plural = "daily usage"
        ordering = ["-day", "-tokens"]
        constraints = [models.UniqueConstraint(fields=["user", "day"], name="usage_user_day")]

    def __str__(self) -> str:
        return f"{self.user} on {self.day}: {self.tokens}"


class Reservation(models.Model):
    """Tokens held for a live reply until replies.finish settles them (the finisher may be another process).

    A reply deleted while it runs leaves its hold without a message; the
    user's next turn releases it (conversations.review.quotas).
    """

    message = models.OneToOneField(Message, models.SET_NULL, null=True, related_name="reservation")
    usage = models.ForeignKey(DailyUsage, models.CASCADE, related_name="reservations")
    tokens = models.PositiveIntegerField()
    # What the reply was charged before this hold (a Continue): its end charges only what comes on top.
    charged = models.PositiveIntegerField(default=0)


class StaffRead(models.Model):
    """One time a staff member opened or exported a conversation in the admin: the audit of staff reading.

    Rows are only ever added (conversations.review.audit); the admin shows them to
    superusers and lets nobody change or delete them. The conversation is
    kept by id and title, so the record outlives a deleted conversation.
    """

    class Action(models.TextChoices):
        VIEW = "view"
        EXPORT_JSON = "export_json", "export (JSON)"
        EXPORT_MARKDOWN = "export_markdown", "export (Markdown)"
        EXPORT_FEEDBACK = "export_feedback", "export (review JSONL)"
        REVIEW = "review", "view (review queue)"

    staff = models.ForeignKey(settings.AUTH_USER_MODEL, models.SET_NULL, null=True, related_name="+")
    staff_name = models.CharField(max_length=150)
    action = models.CharField(max_length=20, choices=Action.choices)
    conversation_id = models.UUIDField(db_index=True)
    conversation_title = models.CharField(max_length=200, blank=True)
    owner = models.CharField(max_length=150, blank=True)
    at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        verbose_name = "staff reading"
        verbose_name_plural = "audit of staff reading"
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.staff_name} {self.action} {self.conversation_id} at {self.at:%Y-%m-%d %H:%M}"
