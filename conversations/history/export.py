"""Transcripts as JSON and Markdown, for downloads and the admin's export action."""

import json
import re

from ..models import Conversation
from .tree import Tree


def as_json(conversation: Conversation) -> dict:
    """The conversation and its active path (with each message's `parent` and `siblings`), as plain data."""
    data = conversation.as_dict()
    data["messages"] = Tree.of(conversation).path_dicts()
    return data


def to_json(conversations: list[Conversation]) -> str:
    return json.dumps([as_json(c) for c in conversations], indent=2, ensure_ascii=False)


def one_line(text: str) -> str:
    """A title on one line: a line break in it could start what looks like another turn."""
    return " ".join(text.split())


def fenced(text: str) -> list[str]:
    """Text inside a code fence longer than any backtick run in it, so nothing in it is Markdown."""
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence, text, fence]


def to_markdown(conversation: Conversation) -> str:
    lines = [f"# {one_line(conversation.display_title)}", ""]
    lines.append(
        f"_{conversation.user.get_username()} · {conversation.created_at:%Y-%m-%d %H:%M} UTC"
        f" · {conversation.model_name or 'unknown model'} · {conversation.source}"
        + (f" · assistant {one_line(conversation.assistant.name)}" if conversation.assistant else "")
        + "_"
    )
    lines.append("")
    if conversation.system_prompt:
        lines += ["**System:**", "", *fenced(conversation.system_prompt), ""]
    for message in Tree.of(conversation).path():
        heading = f"**{message.role.capitalize()}:**"
        if message.role == "assistant" and message.status != "complete":
            heading += f" _({message.status})_"
        lines += [heading, "", *fenced(message.content), ""]
    return "\n".join(lines).rstrip() + "\n"


def filename(conversation: Conversation, extension: str) -> str:
    return f"chat-{conversation.id}.{extension}"
