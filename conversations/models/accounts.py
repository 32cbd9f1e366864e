"""Accounts waiting for staff's approval (CHATSITE_SIGNUP=approval; conversations/accounts.py)."""

from django.conf import settings
from django.db import models
from django.utils import timezone


class PendingAccount(models.Model):
    """An account made while sign-up needed approval: it sees one page, and nothing else, until staff approve it
    (the row then goes)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, models.CASCADE, primary_key=True, related_name="pending")
    signed_up_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["signed_up_at"]
        verbose_name = "account waiting for approval"
        verbose_name_plural = "accounts waiting for approval"

    def __str__(self) -> str:
        return str(self.user)
