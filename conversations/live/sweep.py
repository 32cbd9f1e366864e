"""Conversations whose time is up, removed for good by a periodic sweep in every web process.

- **Temporary chats** that no tab has had open for CHAT_TEMPORARY_GRACE_S.
  `Conversation.seen_at` says when one last had: a socket sets it when it
  opens and closes, and each sweep sets it on the chats this process's
  sockets have open. So a chat open in any process is seen within one
  period, and the grace runs from its last tab's close.
- **Deleted chats** whose CHAT_DELETE_UNDO_S window for Undo has passed.

A chat with a reply streaming is left to a later sweep. The sweep runs on a
timer, not when a socket closes, so a chat still goes when every process that
had it open was restarted meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from datetime import datetime, timedelta

from django.conf import settings
from django.db import DatabaseError, close_old_connections, transaction
from django.db.models import Q
from django.utils import timezone

from ..models import Conversation, Message
from . import state

logger = logging.getLogger(__name__)

# Conversations one pass removes at most; the next pass takes the rest.
BATCH = 100


def period() -> float:
    """Seconds between two sweeps: a third of the grace, so a chat goes at most a third late (1 to 30 s)."""
    return max(1.0, min(30.0, settings.CHAT_TEMPORARY_GRACE / 3))


def seen(conversation_id: str, now: datetime | None = None) -> None:
    """A tab has the temporary chat open (or has just closed it): its grace starts again."""
    Conversation.objects.filter(id=conversation_id, temporary=True).update(seen_at=now or timezone.now())


def _due(now: datetime) -> Q:
    idle_since = now - timedelta(seconds=settings.CHAT_TEMPORARY_GRACE)
    deleted_before = now - timedelta(seconds=settings.CHAT_DELETE_UNDO)
    return Q(temporary=True, seen_at__lt=idle_since) | Q(deleted_at__lt=deleted_before)


def sweep(open_ids: Iterable[str] = (), now: datetime | None = None) -> int:
    """One pass: mark the temporary chats in `open_ids` seen (a write only when some are open), then remove
    what is due. Returns how many went."""
    now = now or timezone.now()
    open_ids = list(open_ids)
    if open_ids:
        Conversation.objects.filter(id__in=open_ids, temporary=True).update(seen_at=now)
    due = list(Conversation.objects.filter(_due(now)).values_list("id", flat=True)[:BATCH])
    return sum(_remove_if_due(conversation_id, now) for conversation_id in due)


@transaction.atomic
def _remove_if_due(conversation_id, now: datetime) -> bool:
    """Asked again under the conversation's lock: a tab may have opened it, or Undo brought it back."""
    conversation = Conversation.objects.select_for_update().filter(_due(now), id=conversation_id).first()
    if conversation is None or conversation.messages.filter(status=Message.Status.STREAMING).exists():
        return False
    conversation.delete()
    return True


def start() -> threading.Thread:
    """Sweep every period() seconds from a daemon thread, for as long as the process runs."""
    thread = threading.Thread(target=_run, name="chat-sweep", daemon=True)
    thread.start()
    return thread


def _run() -> None:
    while True:  # a daemon thread: it ends with its process
        time.sleep(period())
        close_old_connections()  # a long-lived thread: drop a connection the database closed
        try:
            removed = sweep(state.current().open_temporary_chats())
        except DatabaseError as exc:
            logger.warning("the sweep of temporary and deleted chats failed, trying again later: %s", exc)
            continue
        if removed:
            logger.info("removed %d temporary or deleted chat(s)", removed)
