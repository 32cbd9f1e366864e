"""Feedback on replies and what staff do with it: rating, the review queue's export, usage per day.

Users rate their own assistant replies (`rate`); the admin's review queue
(conversations.admin) lists the ratings, thumbs down first, and exports them
as JSON Lines (`to_jsonl`) for later evaluation. `daily_usage` feeds the
admin's usage page.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timezone as dt_timezone

from django.db.models import Count, F, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from ..models import DailyUsage, Feedback, Message, unstorable

MAX_COMMENT_CHARS = 2000
RATINGS = (1, -1, 0)
CONTEXT_TURNS = 2  # messages shown before a rated reply, and after it


class BadFeedback(ValueError):
    """The request's rating or comment is not acceptable; the text says which and why."""


def parse(body: object) -> tuple[int, str]:
    """(rating, comment) from a request's JSON; raises BadFeedback."""
    if not isinstance(body, dict):
        raise BadFeedback("The body must be a JSON object.")
    rating = body.get("rating")
    if isinstance(rating, bool) or rating not in RATINGS:
        raise BadFeedback("rating must be 1, -1 or 0 (0 clears it).")
    comment = body.get("comment", "")
    if comment is None:
        comment = ""
    if not isinstance(comment, str):
        raise BadFeedback("comment must be a string.")
    if len(comment) > MAX_COMMENT_CHARS:
        raise BadFeedback(f"comment can have at most {MAX_COMMENT_CHARS} characters.")
    problem = unstorable(comment)
    if problem:
        raise BadFeedback(f"comment {problem}.")
    return rating, comment.strip()


def rated_reply(user, message_id: int) -> Message | None:
    """The user's own finished assistant reply, or None (someone else's, a user message, a live reply)."""
    return (
        Message.objects.filter(id=message_id, role=Message.Role.ASSISTANT, conversation__user=user)
        .exclude(status=Message.Status.STREAMING)
        .first()
    )


def rate(reply: Message, rating: int, comment: str) -> dict | None:
    """Store (or with 0, clear) the user's feedback on `reply`; returns the message's `feedback` value.

    A changed rating or comment goes back into the queue as not reviewed:
    staff looked at something else.
    """
    if rating == 0:
        Feedback.objects.filter(message=reply).delete()
        return None
    feedback = Feedback.objects.filter(message=reply).first()
    if feedback is None:
        feedback = Feedback(message=reply, user_id=reply.conversation.user_id)
    elif (feedback.rating, feedback.comment) == (rating, comment):
        return feedback.as_dict()
    feedback.rating, feedback.comment = rating, comment
    feedback.updated_at = timezone.now()
    feedback.reviewed, feedback.reviewed_by, feedback.reviewed_at = False, None, None
    feedback.save()
    return feedback.as_dict()


def around(feedback: Feedback) -> list[Message]:
    """The rated reply and the turns around it, oldest first."""
    messages = Message.objects.filter(conversation_id=feedback.message.conversation_id)
    before = list(messages.filter(id__lt=feedback.message_id).order_by("-id")[:CONTEXT_TURNS])
    after = list(messages.filter(id__gt=feedback.message_id).order_by("id")[:CONTEXT_TURNS])
    return [*reversed(before), feedback.message, *after]


def as_record(feedback: Feedback) -> dict:
    """One JSON Lines record: the rating, the notes, and the conversation up to the rated reply."""
    reply = feedback.message
    conversation = reply.conversation
    history = [
        {"role": m.role, "content": m.content}
        for m in Message.objects.filter(conversation=conversation, id__lt=reply.id).order_by("id")
    ]
    if conversation.system_prompt:
        history.insert(0, {"role": "system", "content": conversation.system_prompt})
    return {
        "message_id": reply.id,
        "conversation_id": str(conversation.id),
        "user": conversation.user.get_username(),
        "rating": feedback.rating,
        "comment": feedback.comment,
        "reviewed": feedback.reviewed,
        "staff_note": feedback.staff_note,
        "rated_at": feedback.updated_at.isoformat(),
        "model_name": reply.model_name,
        "messages": history,
        "reply": reply.content,
    }


def to_jsonl(feedback) -> str:
    return "".join(json.dumps(as_record(f), ensure_ascii=False) + "\n" for f in feedback)


@dataclass
class Day:
    day: object
    replies: int
    tokens: int
    tokens_per_s: float | None


def daily_usage(since) -> list[Day]:
    """Replies, tokens and mean tokens/s per UTC day since `since`, oldest first.

    Replies and tokens are what the quotas counted (DailyUsage), so the chart
    agrees with the list below it, deleted chats included. The mean is over
    the generating time of the replies still stored (tokens ÷ time after the
    first token), the formula of Message.tokens_per_s applied to the day's sums.
    """
    counted = (
        DailyUsage.objects.filter(day__gte=since.date())
        .values("day")
        .annotate(replies=Sum("replies"), tokens=Sum("tokens"))
        .order_by("day")
    )
    rates = _rates(since)
    return [Day(row["day"], row["replies"], row["tokens"], rates.get(row["day"])) for row in counted]


def _rates(since) -> dict:
    rows = (
        Message.objects.filter(role=Message.Role.ASSISTANT, created_at__gte=since, completion_tokens__isnull=False)
        .annotate(day=TruncDate("created_at", tzinfo=dt_timezone.utc))
        .values("day")
        .annotate(completion=Sum("completion_tokens"), generating_ms=Sum(F("duration_ms") - F("ttft_ms")))
    )
    return {
        row["day"]: round(row["completion"] * 1000 / row["generating_ms"], 1)
        for row in rows
        if row["generating_ms"] and row["generating_ms"] > 0
    }


def usage_by_group(day) -> list[dict]:
    """Each group's use on `day` (UTC): its users' tokens and replies summed, its quota per user, and how many
    of its users chatted; a user in two groups counts in both."""
    rows = (
        DailyUsage.objects.filter(day=day, user__groups__isnull=False)
        .values("user__groups__id", "user__groups__name", "user__groups__quota__daily_tokens")
        .annotate(tokens=Sum("tokens"), replies=Sum("replies"), users=Count("user", distinct=True))
        .order_by("user__groups__name")
    )
    return [
        {
            "group": row["user__groups__name"],
            "quota": row["user__groups__quota__daily_tokens"],
            "tokens": row["tokens"],
            "replies": row["replies"],
            "users": row["users"],
        }
        for row in rows
    ]
