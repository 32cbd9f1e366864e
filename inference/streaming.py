"""Incremental detokenization: token ids in, text deltas out.

Decoding one token at a time goes wrong two ways: a multi-byte character
(emoji, CJK) spread over several byte tokens decodes as U+FFFD until its last
byte arrives, and SentencePiece-style tokenizers drop a word piece's leading
space when it is decoded alone. The prefix/read-offset scheme of Hugging Face
TGI solves both with two small decodes per token (never a re-decode of the
whole reply): decode a short window ending at the last emitted token, decode
the same window plus the new tokens, and emit the difference only when it does
not end in U+FFFD.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .params import GenerationParams

FINISH_REASONS = ("stop", "length", "cancelled", "error")
REPLACEMENT_CHARACTER = "\ufffd"
# Prompt tokens kept in front of the reply so its first token decodes with context.
PROMPT_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    """Turns a growing list of token ids into text deltas that are safe to show.

    ``push(token_id)`` returns the new text (possibly ""); ``flush()`` returns
    whatever is still held back once the reply ends. All returned pieces
    joined equal ``text``.

    With ``stop`` strings, text that could be the start of one is held back
    until it is not; once one appears, ``stopped`` is set and ``text`` ends
    just before it (nothing more is returned).
    """

    def __init__(self, tokenizer: Any, prompt_ids: Sequence[int] = (), stop: Sequence[str] = ()) -> None:
        self._tokenizer = tokenizer
        self._stop = tuple(stop)
        self._held = ""  # decoded text not yet returned: it may begin a stop string
        self.stopped = False
        self._ids: list[int] = list(prompt_ids[-PROMPT_CONTEXT_TOKENS:]) if prompt_ids else []
        self._prefix = 0  # start of the decoding window
        self._read = len(self._ids)  # end of what has been emitted
        self.text = ""

    def push(self, token_id: int) -> str:
        """Add one generated token; returns the text it completes (possibly "")."""
        self._ids.append(token_id)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith(REPLACEMENT_CHARACTER):
            delta = new_text[len(prefix_text) :]
            # Slide the window: what was just emitted becomes the next prefix,
            # so each decode stays a few tokens long.
            self._prefix, self._read = self._read, len(self._ids)
            return self._release(delta)
        return ""

    def flush(self) -> str:
        """The text held back at the end of the reply (an incomplete character shows as U+FFFD)."""
        if self._read == len(self._ids):
            return self._release("", final=True)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        delta = new_text[len(prefix_text) :]
        self._prefix = self._read = len(self._ids)
        return self._release(delta, final=True)

    def _release(self, delta: str, final: bool = False) -> str:
        """The part of ``delta`` (after what was held) that is safe to show; it is added to ``text``."""
        if self.stopped:
            return ""
        pending = self._held + delta
        cuts = [pending.find(stop) for stop in self._stop if stop in pending]
        if cuts:
            self.stopped = True
            pending, self._held = pending[: min(cuts)], ""
        else:
            keep = 0 if final else _stop_prefix_length(pending, self._stop)
            pending, self._held = pending[: len(pending) - keep], pending[len(pending) - keep :]
        self.text += pending
        return pending

    def _decode(self, ids: list[int]) -> str:
        # clean_up_tokenization_spaces would rewrite " ." differently depending
        # on the window, breaking "joined deltas == decoded reply".
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """The length of the longest end of ``text`` that begins some stop string."""
    for length in range(min(len(text), max((len(stop) for stop in stops), default=0)), 0, -1):
        if any(stop.startswith(text[-length:]) for stop in stops):
            return length
    return 0


# -- what a stream takes and yields ---------------------------------------------


@dataclass
class Request:
    """One reply to generate.

    ``messages``: an optional system message, the history, and the new user
    turn last. ``cancel``: set it from any thread to stop the reply within one
    decoding step; it then ends as "cancelled" with the text so far.
    ``affinity``: requests with the same key (a conversation) go to the same
    server where an engine has several (its prompt cache stays warm); the
    local engine has one and ignores it. ``prefill``: the text the reply
    already has (a Continue): the model goes on from its end, and the events
    carry only what follows it. ``background``: work nobody waits on (a
    chat's title): the local engine runs it only while no other request runs
    or waits, and cancels it as soon as one comes (it ends "cancelled").
    """

    messages: list[dict]
    params: GenerationParams = field(default_factory=GenerationParams)
    cancel: threading.Event = field(default_factory=threading.Event)
    affinity: str = ""
    prefill: str = ""
    background: bool = False


@dataclass
class Result:
    """The outcome of one request.

    ``finish_reason``: "stop" (end-of-turn token), "length" (max_new_tokens or
    the context reached), "cancelled" or "error" (then ``error`` says why).
    ``completion_tokens`` counts every generated token, the end-of-turn token
    included. ``ttft_ms`` runs from submission (queue wait included) to the
    first token; ``tokens_per_s`` is completion tokens over the time since the
    request left the queue.
    """

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: int
    duration_ms: int
    tokens_per_s: float
    dropped_turns: int
    error: str = ""


@dataclass
class Queued:
    """The request waits for a free row: ``position`` is its 1-based place in the queue."""

    position: int


@dataclass
class Started:
    """The request got a row; its prompt is being read."""

    prompt_tokens: int
    dropped_turns: int


@dataclass
class Chunk:
    """New reply text; all chunks joined equal the final ``Result.text``.

    ``generated``: the tokens generated so far, this chunk's included, so a
    reply cut off before its Finished still knows what it cost.
    """

    text: str
    generated: int = 0


@dataclass
class Finished:
    """The last event of every stream."""

    result: Result


Event = Queued | Started | Chunk | Finished
