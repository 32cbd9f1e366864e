"""Token counts for models behind endpoints, whose tokenizer this process does not have.

Where an endpoint sends no usage and has no tokenizer route, a text counts as
one token per three bytes of UTF-8, rounded up, plus four tokens a message for
the chat template's markers (docs/models.md). Byte-level BPE vocabularies of
today's models average three to four bytes a token on English, so the
estimate leans high: a conversation is trimmed a little early rather than sent
too long, and a quota is charged a little more rather than less.
"""

from __future__ import annotations

import math

BYTES_PER_TOKEN = 3
TOKENS_PER_MESSAGE = 4
# A model whose endpoint does not say its context, and whose admin entry does not either.
DEFAULT_CONTEXT = 4096


def estimate(text: str) -> int:
    """An estimate of the tokens of `text` (see the module docstring)."""
    return math.ceil(len(text.encode("utf-8", "surrogatepass")) / BYTES_PER_TOKEN)


def message_tokens(message: dict) -> int:
    return estimate(message.get("content") or "") + TOKENS_PER_MESSAGE


def fit_messages(messages: list[dict], budget: int) -> tuple[list[dict], int]:
    """The messages that fit in `budget` tokens, and how many were dropped.

    The system messages and the newest message always stay; the oldest of the
    others go first, as the local engine trims. Returns ([], n) when even the
    newest message does not fit.
    """
    system = [m for m in messages if m.get("role") == "system"]
    turns = [m for m in messages if m.get("role") != "system"]
    left = budget - sum(message_tokens(m) for m in system)
    kept: list[dict] = []
    for message in reversed(turns):
        cost = message_tokens(message)
        if cost > left:
            break
        kept.append(message)
        left -= cost
    if not kept:
        return [], len(turns)
    return system + kept[::-1], len(turns) - len(kept)
