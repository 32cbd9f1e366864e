"""`message|undo_url`: the URL a flash message's Undo button posts to (conversations.views.offer_undo)."""

from django import template

register = template.Library()


@register.filter
def undo_url(message) -> str:
    """The URL in the message's extra tags ("undo <url>"), or "" for a message that offers no Undo."""
    tag, _, url = (getattr(message, "extra_tags", "") or "").partition(" ")
    return url if tag == "undo" else ""
