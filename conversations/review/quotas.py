"""Daily token quotas: CHAT_USER_DAILY_TOKENS per user per UTC day, over the web, the API and batch_prompts.

How a turn spends (docs/review.md):

- `reserve()`, before a reply starts: in the turn's transaction, the user's
  row of the day is locked and the reply's most cost held on it: its prompt
  (UTF-8 bytes, which no byte-level BPE token is shorter than, plus the chat
  template's tokens) and its max_new_tokens, capped at what is left of the
  day: a reply may generate only as many tokens as the budget still holds,
  so no turn can take the day past its limit (one call asking 4,096 tokens
  with 300 left gets at most 300). PostgreSQL's row lock and SQLite's one
  write transaction at a time make simultaneous turns see each other's holds.
- `settle()`, when the reply ends (replies.finish, in the same transaction as
  the reply's final row): the hold is swapped for the tokens really spent,
  on the day the reply started.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from datetime import timezone as dt_timezone

from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from ..models import DailyUsage, GroupQuota, Message, QuotaOverride, Reservation

# Tokens a chat template adds: a default system prompt, and role markers per message.
TEMPLATE_TOKENS = 64
TOKENS_PER_MESSAGE = 8


@dataclass(frozen=True)
class Hold:
    """Tokens held for one reply: on the user's row `usage_id`, with the reply's `max_new_tokens` capped."""

    usage_id: int
    tokens: int
    max_new_tokens: int


class QuotaExceeded(Exception):
    """The user's tokens for today are spent; `message` says when they come back."""

    def __init__(self, used: int, limit: int) -> None:
        self.used = used
        self.limit = limit
        self.message = f"You have used {used} of your {limit} tokens for today; the limit resets at 00:00 UTC."
        super().__init__(self.message)


def today() -> date:
    return timezone.now().astimezone(dt_timezone.utc).date()


def resets_at() -> datetime:
    return datetime.combine(today() + timedelta(days=1), time(0), tzinfo=dt_timezone.utc)


def daily_limit(user_id) -> int:
    """The user's budget per day (0 = no limit): their override, else the largest of their groups' quotas,
    else CHAT_USER_DAILY_TOKENS."""
    override = QuotaOverride.objects.filter(user_id=user_id).values_list("daily_tokens", flat=True).first()
    if override is not None:
        return override
    groups = list(GroupQuota.objects.filter(group__user__id=user_id).values_list("daily_tokens", flat=True))
    if groups:
        return 0 if 0 in groups else max(groups)  # no limit is the largest
    return settings.CHAT_USER_DAILY_TOKENS


def status(user_id) -> dict:
    """Today's use for the page: spent and held tokens count as used."""
    row = DailyUsage.objects.filter(user_id=user_id, day=today()).first()
    used = (row.tokens + row.reserved) if row else 0
    limit = daily_limit(user_id)
    return {
        "used": used,
        "limit": limit,
        "left": max(limit - used, 0) if limit else None,
        "resets_at": resets_at().isoformat(),
    }


def check(user_id) -> None:
    """Raise QuotaExceeded when the user has nothing left today (before anything is stored)."""
    limit = daily_limit(user_id)
    if not limit:
        return
    used = status(user_id)["used"]
    if used >= limit:
        raise QuotaExceeded(used, limit)


def prompt_bound(history: list[dict]) -> int:
    """An upper bound of a prompt's tokens, without a tokenizer (a worker-mode web process has none)."""
    text_bytes = sum(len(m["content"].encode("utf-8")) for m in history)
    return text_bytes + TEMPLATE_TOKENS + TOKENS_PER_MESSAGE * len(history)


def reserve(user_id, prompt: int, max_new_tokens: int, message_id: int | None = None, charged: int = 0) -> Hold:
    """Hold a reply's most cost (`prompt` tokens at most, and `max_new_tokens`) on the user's row of today,
    with max_new_tokens capped at what is left; raise QuotaExceeded when not one token is.

    With `message_id`, the hold is recorded for that reply, so whoever
    finishes it (possibly another process) settles it; `charged` is what a
    continued reply was charged already. Call inside the transaction that
    creates (or continues) the reply.
    """
    with transaction.atomic():
        usage, _ = DailyUsage.objects.select_for_update().get_or_create(user_id=user_id, day=today())
        # Nothing is held when nothing is reserved (a hold's tokens are part of `reserved` until it goes).
        if usage.reserved and _settle_ended(usage):
            usage.refresh_from_db()
        limit = daily_limit(user_id)
        if limit:
            left = limit - usage.tokens - usage.reserved
            if left - prompt < 1:
                raise QuotaExceeded(usage.tokens + usage.reserved, limit)
            max_new_tokens = min(max_new_tokens, left - prompt)
        hold = Hold(usage.pk, prompt + max_new_tokens, max_new_tokens)
        DailyUsage.objects.filter(pk=usage.pk).update(reserved=F("reserved") + hold.tokens)
        if message_id is not None:
            Reservation.objects.create(message_id=message_id, usage=usage, tokens=hold.tokens, charged=charged)
    return hold


def release(usage_id: int, held: int, spent: int, replies: int = 1) -> None:
    """Swap a hold for what was spent (on the day it was held)."""
    DailyUsage.objects.filter(pk=usage_id).update(
        tokens=F("tokens") + spent, reserved=F("reserved") - held, replies=F("replies") + replies
    )


def settle(message_id: int, spent: int) -> None:
    """The reply ended having spent `spent` tokens in all: release its hold (if it had one)."""
    hold = Reservation.objects.filter(message_id=message_id).first()
    if hold is None:
        return
    _release_hold(hold, spent)


def _release_hold(hold: Reservation, spent: int) -> None:
    """A continued reply's `spent` includes what it was charged before: that part is not charged twice,
    nor counted as another reply."""
    release(hold.usage_id, hold.tokens, max(spent - hold.charged, 0), replies=0 if hold.charged else 1)
    hold.delete()


def spent(message: Message | None) -> int:
    if message is None:
        return 0
    return (message.prompt_tokens or 0) + (message.completion_tokens or 0)


def _settle_ended(usage: DailyUsage) -> bool:
    """Settle holds of replies that ended without finish() (a server killed outright, marked interrupted
    at its next start; a conversation deleted mid-reply), so neither eats a user's budget. True if any was."""
    ended = Reservation.objects.filter(usage=usage).exclude(message__status=Message.Status.STREAMING)
    holds = list(ended.select_related("message"))
    for hold in holds:
        _release_hold(hold, spent(hold.message))
    return bool(holds)
