"""Summaries of a chat's oldest turns, written when they no longer fit its model (conversations/live/summaries.py)."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class Summary(models.Model):
    """The text that stands in, in the prompt, for the path from the chat's first message down to `until`.

    Messages form a tree, so the path above a message is one path: a summary
    serves every branch that goes through `until`. A branch made above it (an
    edit of an earlier message) does not, and gets its own. A longer summary
    extends a shorter one; both stay, for the branches each serves.
    """

    conversation = models.ForeignKey("Conversation", models.CASCADE, related_name="summaries")
    until = models.OneToOneField("Message", models.CASCADE, related_name="summary")
    text = models.TextField(blank=True, help_text="The model's words.")
    # The user's short messages among those it covers, word for word: where people state names,
    # preferences and instructions, which a small model's rewording loses.
    said = models.JSONField(default=list, blank=True)
    covered = models.PositiveIntegerField(help_text="Messages of the path it stands in for.")
    # What writing it cost: the turn that needed it waited for this long (docs/history.md, "Summaries").
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        verbose_name_plural = "summaries"

    def __str__(self) -> str:
        return f"Summary of {self.covered} messages"

    def as_dict(self) -> dict:
        """As the conversation's JSON and the `summary` frame give it: the text the model reads."""
        return {"text": compose(self.text, self.said), "until": self.until_id}

    def as_turn(self) -> dict:
        """As a turn carries it (Turn.summary): its parts too, which a longer summary extends."""
        return self.as_dict() | {"notes": self.text, "said": self.said}


SAID_HEADING = "What the user said, word for word:"


def compose(notes: str, said: list[str]) -> str:
    """The summary as the model reads it: the model's notes, then the user's own words."""
    quoted = "\n".join(f"- {text}" for text in said)
    parts = [notes.strip(), f"{SAID_HEADING}\n{quoted}" if said else ""]
    return "\n\n".join(part for part in parts if part)
