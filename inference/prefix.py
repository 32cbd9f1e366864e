"""Prompt prefixes already read: their keys and values, so a new prompt that starts the same skips them.

Every chat's prompt starts with the same rendered system prompt, and each
turn of a conversation starts with the whole previous prompt and reply.
Reading a prompt is the costly part of the time to first token on a CPU (the
int4 kernels cost the same per prompt token as per decoded row), so the
scheduler keeps here the keys and values of recently read prompts, and of
replies with their prompts once they end, and each new prompt starts from
the longest stored prefix it shares. Eight users arriving at once then read
only what follows the system prompt; the next turn of a conversation reads
only the new message.

Bounded by bytes (``max_bytes``), least recently used first out. A prompt's
keys at position p depend only on the tokens up to p, so a stored prefix is
exactly what reading it again would compute, and so is any first part of it:
of a conversation too long for the store, the scheduler stores as much of
the start as fits, and its next turn reads only what follows.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch

# Shorter shared prefixes are not worth a lookup and a copy.
MIN_TOKENS = 4

# Per layer, one row's keys and values, each (1, kv_heads, tokens, head_dim).
States = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Prefix:
    """A stored prefix: its token ids and per layer its keys and values (1, kv_heads, tokens, head_dim)."""

    ids: tuple[int, ...]
    layers: States

    @property
    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.layers)


class PrefixStore:
    """Recently read prompt prefixes, looked up by the longest common start (scheduler thread only)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.tokens_saved = 0
        self._entries: OrderedDict[tuple[int, ...], Prefix] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def find(self, ids: list[int]) -> tuple[Prefix, int] | None:
        """The stored prefix sharing the most leading tokens with the prompt ``ids``, and how many.

        At least one token is left to read (its logits give the first reply
        token). None when no stored prefix shares ``MIN_TOKENS`` with it.
        """
        wanted = tuple(ids)
        best: tuple[Prefix, int] | None = None
        for entry in self._entries.values():
            shared = min(len(wanted) - 1, _common_length(entry.ids, wanted))
            if shared >= MIN_TOKENS and (best is None or shared > best[1]):
                best = (entry, shared)
        if best is not None:
            self._entries.move_to_end(best[0].ids)
            self.hits += 1
            self.tokens_saved += best[1]
        return best

    def add(self, ids: list[int], layers: States) -> None:
        """Keep ``layers`` (one row's keys and values, real tokens only) as the prefix ``ids``."""
        key = tuple(ids)
        if len(key) < MIN_TOKENS:
            return
        # A stored prompt that this one extends (the conversation's previous turn) is no longer needed.
        for old in [old for old in self._entries if len(old) <= len(key) and key[: len(old)] == old]:
            self._drop(old)
        entry = Prefix(key, layers)
        if entry.nbytes > self.max_bytes:
            return
        self._entries[key] = entry
        self.bytes += entry.nbytes
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))

    def stored(self) -> list[Prefix]:
        """The stored prefixes, least recently used first."""
        return list(self._entries.values())

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def _drop(self, key: tuple[int, ...]) -> None:
        self.bytes -= self._entries.pop(key).nbytes


def _common_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    """How many leading tokens ``a`` and ``b`` share (slice comparisons: C speed, log steps)."""
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low
