"""API keys: made once, stored as a hash, checked in constant time, revoked by their owner.

A key reads `cs-` + 43 URL-safe characters (256 random bits). Its first
PREFIX_LENGTH characters are kept in clear to list it and to find it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import timedelta

from django.utils import timezone

from .. import accounts
from ..models import ApiKey

KEY_PREFIX = "cs-"
PREFIX_LENGTH = 11  # "cs-" and 8 random characters
# last_used_at is written at most this often per key, not on every call.
LAST_USED_RESOLUTION = timedelta(seconds=60)


def digest(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def create(user, name: str) -> tuple[ApiKey, str]:
    """A new key of `user`: its row and the key itself (which is never stored)."""
    raw = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey.objects.create(
        user=user, name=name.strip() or "API key", prefix=raw[:PREFIX_LENGTH], key_hash=digest(raw)
    )
    return key, raw


def authenticate(raw: str) -> ApiKey | None:
    """The active key `raw` is, with its user loaded, or None (also for a revoked key or an inactive user)."""
    if not raw.startswith(KEY_PREFIX) or len(raw) < PREFIX_LENGTH:
        return None
    wanted = digest(raw)
    candidates = ApiKey.objects.active().filter(prefix=raw[:PREFIX_LENGTH]).select_related("user")
    found = None
    for key in candidates:
        if hmac.compare_digest(key.key_hash, wanted):
            found = key
    if found is None or not found.user.is_active or accounts.is_pending(found.user):
        return None  # a key of an account waiting for approval (conversations.accounts) opens nothing
    now = timezone.now()
    if found.last_used_at is None or now - found.last_used_at >= LAST_USED_RESOLUTION:
        ApiKey.objects.filter(id=found.id).update(last_used_at=now)
        found.last_used_at = now
    return found


def revoke(user, key_id: int) -> bool:
    """Revoke one of `user`'s own keys; False when it is not theirs (or not there)."""
    return bool(ApiKey.objects.for_user(user).active().filter(id=key_id).update(revoked_at=timezone.now()))
