"""Turning a conversation into prompt token ids that fit the context window.

The tokenizer's own chat template renders the conversation (system prompt,
history, the new user turn, then the assistant header). A tokenizer without a
template gets a plain fallback format::

    System: You are a helpful assistant.
    User: Hello
    Assistant: Hi!
    User: What is 2+2?
    Assistant:

When the conversation is too long, the oldest turns go first, a user turn
together with the assistant reply that followed it; the system prompt and the
newest user turn always stay.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import InvalidParams, PromptTooLong

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Prompt:
    """A prompt ready for the model.

    ``dropped_turns`` counts the history messages (user and assistant alike)
    left out to fit; ``max_new_tokens`` is the caller's limit, capped to the
    room left in the context.
    """

    ids: list[int]
    dropped_turns: int
    max_new_tokens: int


def check_messages(messages: object) -> list[dict[str, str]]:
    """A validated copy of ``messages`` holding only ``role`` and ``content``.

    Returns a new list. Raises InvalidParams unless ``messages`` is a non-empty
    list of {"role", "content"} mappings with known roles and string contents,
    a system message (if any) first, and a user message last.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidParams("messages must be a non-empty list")
    checked = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise InvalidParams(f"message {index} must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise InvalidParams(f"message {index} has role {role!r}; expected system, user or assistant")
        if not isinstance(content, str):
            raise InvalidParams(f"message {index} content must be a string")
        if role == "system" and index != 0:
            raise InvalidParams("only the first message may be a system message")
        checked.append({"role": role, "content": content})
    if checked[-1]["role"] != "user":
        raise InvalidParams("the last message must be the user's")
    return checked


def with_system(messages: list[dict[str, str]], default_system_prompt: str) -> list[dict[str, str]]:
    """``messages`` with ``default_system_prompt`` in front when they have no system message."""
    if messages[0]["role"] == "system" or not default_system_prompt:
        return messages
    return [{"role": "system", "content": default_system_prompt}, *messages]


def render(tokenizer: Any, messages: list[dict[str, str]], prefill: str = "") -> list[int]:
    """Token ids for ``messages`` followed by the assistant's header, ready to generate.

    With ``prefill``, the reply has begun with that text (a Continue): the
    ids end inside the assistant's turn, after it, so the model goes on from
    there. Control tokens typed by users (``<|im_end|>``) are encoded as plain
    text, so a message cannot forge turns.
    """
    if getattr(tokenizer, "chat_template", None):
        reply = [{"role": "assistant", "content": prefill}] if prefill else []
        encoded = tokenizer.apply_chat_template(
            [*messages, *reply],
            add_generation_prompt=not prefill,
            continue_final_message=bool(prefill),
            tokenize=True,
            return_dict=True,
            sanitize_control_tokens=True,
        )
        return list(encoded["input_ids"])
    encoded = tokenizer(fallback_text(messages, prefill), add_special_tokens=True, split_special_tokens=True)
    return list(encoded["input_ids"])


def fallback_text(messages: list[dict[str, str]], prefill: str = "") -> str:
    """The plain prompt format for tokenizers without a chat template (see the module doc)."""
    lines = [f"{message['role'].capitalize()}: {message['content']}" for message in messages]
    return "\n".join(lines) + "\nAssistant:" + (f" {prefill}" if prefill else "")


def fit_prompt(
    tokenizer: Any, messages: list[dict[str, str]], max_new_tokens: int, context_length: int, prefill: str = ""
) -> Prompt:
    """Render ``messages`` (already checked; ``prefill`` as in render()), dropping the oldest turns until it fits.

    Room for ``max_new_tokens`` is reserved first; when the system prompt and
    the newest user turn alone leave less, ``max_new_tokens`` shrinks to what
    is left. Returns a Prompt. Raises PromptTooLong if not even one new token
    fits.
    """
    head = messages[:1] if messages[0]["role"] == "system" else []
    history, newest = messages[len(head) : -1], messages[-1]
    groups = _turn_groups(history)

    def build(dropped_groups: int) -> list[int]:
        kept = [message for group in groups[dropped_groups:] for message in group]
        return render(tokenizer, [*head, *kept, newest], prefill)

    ids = build(0)
    if len(ids) + max_new_tokens <= context_length or not groups:
        return _capped(ids, 0, max_new_tokens, context_length)
    dropped, ids = _fewest_drops(build, len(groups), max_new_tokens, context_length)
    dropped_turns = sum(len(group) for group in groups[:dropped])
    return _capped(ids, dropped_turns, max_new_tokens, context_length)


def _fewest_drops(build, group_count: int, max_new_tokens: int, context_length: int) -> tuple[int, list[int]]:
    """Binary search for the fewest leading groups to drop so the prompt plus reply fits.

    Dropping more turns never makes the prompt longer, so the search is valid
    and renders O(log n) prompts rather than n. Returns (groups dropped,
    prompt ids); all groups when nothing fits.
    """
    built: dict[int, list[int]] = {}

    def fits(dropped: int) -> bool:
        built[dropped] = build(dropped)
        return len(built[dropped]) + max_new_tokens <= context_length

    low, high = 1, group_count
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    if high not in built:
        built[high] = build(high)
    return high, built[high]


def _capped(ids: list[int], dropped_turns: int, max_new_tokens: int, context_length: int) -> Prompt:
    room = context_length - len(ids)
    if room < 1:
        raise PromptTooLong(
            f"the prompt is {len(ids)} tokens, the model's context is {context_length}: "
            "shorten the message or the system prompt"
        )
    return Prompt(ids=ids, dropped_turns=dropped_turns, max_new_tokens=min(max_new_tokens, room))


def _turn_groups(history: list[dict[str, str]]) -> list[list[dict[str, str]]]:
    """Split history into droppable units: a user turn with the replies that followed it.

    Assistant messages before any user turn form a unit of their own.
    """
    groups: list[list[dict[str, str]]] = []
    for message in history:
        if message["role"] == "user" or not groups:
            groups.append([message])
        else:
            groups[-1].append(message)
    return groups
