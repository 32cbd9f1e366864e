"""Importing conversations: Chatsite's own export.json and ChatGPT's conversations.json.

The file is read with ijson, one entry (conversation) at a time, so memory
stays bounded by the largest single conversation rather than the file. Each
entry is stored in its own transaction: an entry that turns out bad halfway
leaves nothing behind, and the entries before it stay imported.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

import ijson
import ijson.common
from django.db import DatabaseError, transaction
from django.utils import timezone

from inference.params import GenerationParams, InvalidParams

from ..models import Conversation, Message, unstorable
from . import tree

logger = logging.getLogger(__name__)

ROLES = set(Message.Role.values)
TITLE_MAX = Conversation._meta.get_field("title").max_length
MODEL_NAME_MAX = Conversation._meta.get_field("model_name").max_length
TOKEN_FIELDS = ("prompt_tokens", "completion_tokens", "ttft_ms", "duration_ms")
# JSON nesting an export never reaches (a ChatGPT message sits about 6 deep).
MAX_DEPTH = 64


class BadEntry(ValueError):
    """An entry that cannot be imported; the message says why."""


class BadFile(ValueError):
    """A file that is not a JSON conversation export at all."""


@dataclass
class ImportResult:
    # (id, title) of each conversation made: not the objects, so a file of
    # many chats does not keep them all in memory.
    imported: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict:
        return {
            "imported": len(self.imported),
            "conversations": [{"id": ident, "title": title} for ident, title in self.imported],
            "skipped": self.skipped,
            "error": self.error,
        }

    def summary(self) -> str:
        """One paragraph for the page's message."""
        parts = [f"Imported {len(self.imported)} conversation{'' if len(self.imported) == 1 else 's'}."]
        if self.error:
            parts.append(self.error)
        for skip in self.skipped:
            parts.append(f"Skipped entry {skip['entry']} ({skip['title'] or 'untitled'}): {skip['reason']}")
        return " ".join(parts)


def import_file(user, file: IO[bytes]) -> ImportResult:
    """Create `user`'s conversations (source=import) from an export file.

    Never raises for bad input: a bad file is reported in `error`, bad entries
    in `skipped` (numbered from 1, with their title and the reason).
    """
    result = ImportResult()
    try:
        for number, entry in enumerate(_entries(file), start=1):
            title = entry.get("title") if isinstance(entry, dict) else None
            title = title if isinstance(title, str) else ""
            try:
                conversation = _store(user, _parse(entry))
                result.imported.append((str(conversation.id), conversation.display_title))
            except BadEntry as exc:
                result.skipped.append({"entry": number, "title": title[:TITLE_MAX], "reason": str(exc)})
            except DatabaseError:
                # _store's transaction has rolled back: nothing of the entry stays.
                logger.exception("import for user %s: entry %d could not be stored", user.pk, number)
                reason = "the database refused it (nothing of it was kept)"
                result.skipped.append({"entry": number, "title": title[:TITLE_MAX], "reason": reason})
    except BadFile as exc:
        result.error = str(exc)
    except ijson.JSONError as exc:
        result.error = f"The file is not valid JSON ({exc}); entries before that point were imported."
    except UnicodeDecodeError:  # raw bytes that are no UTF-8, such as an encoded lone surrogate
        result.error = "The file is not valid UTF-8 text; entries before that point were imported."
    logger.info("import for user %s: %d imported, %d skipped", user.pk, len(result.imported), len(result.skipped))
    return result


def _entries(file: IO[bytes]):
    """The file's conversations: the one object, or each item of the list.

    Built here from ijson's raw events (basic_parse), not with ijson.items:
    items tracks each event's path as a string ("item.item.item..."), so
    memory grew with the square of the nesting (12,000 brackets, a 24 KB file,
    took 300 MB; 100,000 took 21 GB). Here nesting past MAX_DEPTH ends the
    import as soon as it is read, before anything deeper is built.
    """
    first = _first_byte(file)
    if first not in (b"[", b"{"):
        raise BadFile("The file is not a JSON export: expected a conversation object or a list of them.")
    top = 1 if first == b"[" else 0  # the depth at which a conversation starts
    depth, builder = 0, None
    for event, value in ijson.basic_parse(file, use_float=True):
        opening = event in ("start_map", "start_array")
        if event in ("end_map", "end_array"):
            depth -= 1
        if depth >= top:
            builder = builder or ijson.common.ObjectBuilder()
            builder.event(event, value)
            if depth == top and not opening:  # the entry's last event: a closing bracket, or a lone value
                yield builder.value
                builder = None
        if opening:
            depth += 1
            if depth > MAX_DEPTH:
                raise BadFile(f"The file nests deeper than {MAX_DEPTH} levels, which no export does.")


def _first_byte(file: IO[bytes]) -> bytes:
    while True:
        byte = file.read(1)
        if byte == b"\xef":  # a UTF-8 byte order mark
            file.read(2)
            continue
        if not byte or not byte.isspace():
            break
    file.seek(file.tell() - len(byte))
    return byte


@dataclass
class ParsedConversation:
    title: str
    system_prompt: str = ""
    params: dict = field(default_factory=dict)
    model_name: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    messages: list[dict] = field(default_factory=list)


def _parse(entry: Any) -> ParsedConversation:
    if not isinstance(entry, dict):
        raise BadEntry("not a conversation object")
    if "mapping" in entry:
        return _parse_chatgpt(entry)
    if "messages" in entry:
        return _parse_chatsite(entry)
    raise BadEntry("neither a Chatsite export (no 'messages') nor a ChatGPT conversation (no 'mapping')")


def _parse_chatsite(entry: dict) -> ParsedConversation:
    messages = entry["messages"]
    if not isinstance(messages, list):
        raise BadEntry("'messages' is not a list")
    try:
        params = GenerationParams.from_dict(entry.get("params") or {}).to_dict()
    except (InvalidParams, TypeError, AttributeError) as exc:
        raise BadEntry(f"params: {exc}") from None
    parsed = ParsedConversation(
        title=_text(entry, "title"),
        system_prompt=_text(entry, "system_prompt"),
        params=params,
        model_name=_text(entry, "model_name")[:MODEL_NAME_MAX],
        created_at=_iso_time(entry.get("created_at"), "created_at"),
        updated_at=_iso_time(entry.get("updated_at"), "updated_at"),
    )
    for position, message in enumerate(messages, start=1):
        parsed.messages.append(_chatsite_message(message, position))
    return parsed


def _chatsite_message(message: Any, position: int) -> dict:
    where = f"message {position}"
    if not isinstance(message, dict):
        raise BadEntry(f"{where} is not an object")
    if not isinstance(message.get("role"), str) or message["role"] not in ROLES:
        raise BadEntry(f"{where}: role must be system, user or assistant")
    if not isinstance(message.get("content"), str):
        raise BadEntry(f"{where}: content must be text")
    problem = unstorable(message["content"])
    if problem:
        raise BadEntry(f"{where}: content {problem}")
    fields = {"role": message["role"], "content": message["content"]}
    status = message.get("status")
    if status in Message.Status.values:
        # A reply that was still streaming when exported did not finish.
        fields["status"] = Message.Status.INTERRUPTED if status == Message.Status.STREAMING else status
    if message.get("finish_reason") in Message.FinishReason.values:
        fields["finish_reason"] = message["finish_reason"]
    for name in TOKEN_FIELDS:
        value = message.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**31:
            fields[name] = value
    fields["model_name"] = _text(message, "model_name")[:MODEL_NAME_MAX]
    fields["created_at"] = _iso_time(message.get("created_at"), f"{where}: created_at")
    return fields


def _parse_chatgpt(entry: dict) -> ParsedConversation:
    """The active path: from `current_node` up the `parent` links to the root."""
    mapping = entry["mapping"]
    if not isinstance(mapping, dict):
        raise BadEntry("'mapping' is not an object")
    node_id = entry.get("current_node")
    if not isinstance(node_id, str) or node_id not in mapping:
        raise BadEntry("'current_node' is missing or not in 'mapping'")
    path, seen = [], set()
    while node_id is not None:
        if not isinstance(node_id, str):  # ids are strings; a list or object would not even hash
            raise BadEntry("a node's 'parent' must be a node id or null")
        if node_id in seen:
            raise BadEntry("'mapping' has a cycle")
        node = mapping.get(node_id)
        if not isinstance(node, dict):
            raise BadEntry(f"node {node_id!r} is missing from 'mapping'")
        seen.add(node_id)
        path.append(node)
        node_id = node.get("parent")
    parsed = ParsedConversation(
        title=_text(entry, "title"),
        created_at=_epoch_time(entry.get("create_time"), "create_time"),
        updated_at=_epoch_time(entry.get("update_time"), "update_time"),
    )
    for node in reversed(path):
        message = _chatgpt_message(node.get("message"))
        if message is None:
            continue
        if message["role"] == Message.Role.SYSTEM and not parsed.messages and not parsed.system_prompt:
            parsed.system_prompt = message["content"]
        else:
            parsed.messages.append(message)
    return parsed


def _chatgpt_message(message: Any) -> dict | None:
    """A stored message for a ChatGPT node, or None for what is not shown as
    text in a chat (the empty root, hidden system nodes, tool calls, images)."""
    if not isinstance(message, dict):
        return None
    author = message.get("author") or {}
    role = author.get("role") if isinstance(author, dict) else None
    content = message.get("content") or {}
    if not isinstance(role, str) or role not in ROLES or not isinstance(content, dict):
        return None
    parts = content.get("parts") or []
    text = "\n".join(part for part in parts if isinstance(part, str)) if isinstance(parts, list) else ""
    metadata = message.get("metadata") or {}
    text = text.replace("\x00", "")
    if unstorable(text):
        raise BadEntry(f"a message's text {unstorable(text)}")
    if not text.strip() or (isinstance(metadata, dict) and metadata.get("is_visually_hidden_from_conversation")):
        return None
    fields: dict = {"role": role, "content": text, "created_at": _epoch_time(message.get("create_time"), "create_time")}
    model = metadata.get("model_slug") if isinstance(metadata, dict) else None
    if isinstance(model, str) and not unstorable(model):
        fields["model_name"] = model[:MODEL_NAME_MAX]
    return fields


def _text(data: dict, key: str) -> str:
    value = data.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadEntry(f"{key} must be text")
    value = value.replace("\x00", "")
    problem = unstorable(value)
    if problem:
        raise BadEntry(f"{key} {problem}")
    return value


def _iso_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        # In UTC here, as the database will store it: year 1 or 9999 with an offset overflows.
        return moment.astimezone(UTC) if timezone.is_aware(moment) else moment.replace(tzinfo=UTC)
    except (TypeError, ValueError, OverflowError):
        raise BadEntry(f"{what} is not an ISO 8601 time") from None


def _epoch_time(value: Any, what: str) -> datetime | None:
    if value is None:
        return None
    try:
        return datetime.fromtimestamp(float(value), tz=UTC)
    except (TypeError, ValueError, OverflowError, OSError):
        raise BadEntry(f"{what} is not a Unix time") from None


@transaction.atomic
def _store(user, parsed: ParsedConversation) -> Conversation:
    now = timezone.now()
    created = parsed.created_at or now
    conversation = Conversation(
        user=user,
        title=_title(parsed),
        system_prompt=parsed.system_prompt,
        model_name=parsed.model_name,
        source=Conversation.Source.IMPORT,
        created_at=created,
        updated_at=parsed.updated_at or created,
    )
    conversation.set_params(parsed.params)
    conversation.save()
    messages = []
    for fields in parsed.messages:
        fields = dict(fields, created_at=fields.get("created_at") or created)
        messages.append(Message(conversation=conversation, **fields))
    Message.objects.bulk_create(messages, batch_size=500)
    tree.chain(conversation, messages)
    return conversation


def _title(parsed: ParsedConversation) -> str:
    title = " ".join(parsed.title.split())
    if not title:
        first_user = next((m["content"] for m in parsed.messages if m["role"] == Message.Role.USER), "")
        return Conversation().title_from(first_user) if first_user else ""
    return title if len(title) <= TITLE_MAX else title[: TITLE_MAX - 1] + "…"
