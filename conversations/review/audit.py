"""The audit of staff reading: who opened or exported which conversation in the admin, and when.

Rows are only added, here; the admin (StaffReadAdmin) shows them to
superusers and offers no way to change or delete them.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..models import Conversation, StaffRead

VIEW = StaffRead.Action.VIEW
EXPORT_JSON = StaffRead.Action.EXPORT_JSON
EXPORT_MARKDOWN = StaffRead.Action.EXPORT_MARKDOWN
EXPORT_FEEDBACK = StaffRead.Action.EXPORT_FEEDBACK
REVIEW = StaffRead.Action.REVIEW


def record(request, action: str, conversations: Iterable[Conversation]) -> None:
    """One row per conversation that `request.user` read through `action`."""
    staff = request.user
    rows = {
        c.pk: StaffRead(
            staff=staff,
            staff_name=staff.get_username(),
            action=action,
            conversation_id=c.pk,
            conversation_title=c.display_title[:200],
            owner=c.user.get_username(),
        )
        for c in conversations
    }
    StaffRead.objects.bulk_create(rows.values())
