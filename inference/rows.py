"""The rows of the scheduler: a request in progress (Job) and the rows decoded together (Batch).

A Batch holds one shared DynamicCache. Rows are independent:

* a new request is prefilled on its own, then merged into the running batch
  by left-padding the shorter side's cache and attention mask;
* a finished or cancelled row leaves at once (``index_select`` on the batch
  dimension), and columns that became padding for every row are trimmed;
* positions are per row, so a row's keys never move relative to each other and
  a greedy row decodes the same tokens as it would alone.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from .params import GenerationParams
from .prefix import Prefix, States
from .prompts import Prompt
from .sampling import Sampler
from .streaming import Chunk, Event, IncrementalDetokenizer, Result

_job_ids = itertools.count(1)


@dataclass(eq=False)
class Job:
    """One request inside the scheduler: its prompt, where its events go, its progress."""

    request: Any  # inference.engine.Request: messages, params, cancel
    prompt: Prompt
    deliver: Callable[[Event], None]
    id: int = field(default_factory=lambda: next(_job_ids))
    submitted_at: float = field(default_factory=time.monotonic)
    started_at: float = 0.0
    first_token_at: float = 0.0
    tokens: list[int] = field(default_factory=list)
    detokenizer: IncrementalDetokenizer | None = None
    holds_slot: bool = False
    position: int = 0  # place in the waiting queue last told to the reader
    finished: bool = False

    @property
    def params(self) -> GenerationParams:
        return self.request.params

    @property
    def cancelled(self) -> bool:
        return self.request.cancel.is_set()

    @property
    def background(self) -> bool:
        return getattr(self.request, "background", False)

    def take(self, token: int, eos_token_ids: Collection[int]) -> str | None:
        """Record one generated token and send its text; returns why the reply ends there, if it does."""
        self.tokens.append(token)
        if token in eos_token_ids:
            return "stop"
        assert self.detokenizer is not None, "a started job has a detokenizer"
        text = self.detokenizer.push(token)
        if text:
            self.deliver(Chunk(text, len(self.tokens)))
        if self.detokenizer.stopped:
            return "stop"
        if len(self.tokens) >= self.prompt.max_new_tokens:
            return "length"
        return None

    def result(self, finish_reason: str, error: str = "") -> Result:
        """The Result of this job as it stands now."""
        now = time.monotonic()
        count = len(self.tokens)
        since_start = now - (self.started_at or self.submitted_at)
        return Result(
            text=self.detokenizer.text if self.detokenizer else "",
            finish_reason=finish_reason,
            prompt_tokens=len(self.prompt.ids),
            completion_tokens=count,
            ttft_ms=round((self.first_token_at - self.submitted_at) * 1000) if self.first_token_at else 0,
            duration_ms=round((now - self.submitted_at) * 1000),
            tokens_per_s=count / since_start if count and since_start > 0 else 0.0,
            dropped_turns=self.prompt.dropped_turns,
            error=error,
        )


@dataclass(eq=False)
class Prefill:
    """Requests whose prompts are being read into a new cache.

    Either several short prompts admitted together, left-padded and read in
    one forward pass, or one long prompt read a chunk at a time. ``mask``
    covers the padded prompts (1 = a real token). A row whose prompt starts
    with a stored prefix (prefix.py) has it in the cache from the start: the
    first columns (as many as the longest reused prefix) hold each row's
    prefix, right-aligned, and the rest of each prompt follows, left-padded,
    so a row can have padding between the two.
    """

    jobs: list[Job]
    cache: Any
    mask: torch.Tensor
    reused: list[int]  # each row's tokens taken from a stored prefix
    done: int = 0  # prompt columns already in the cache
    logits: torch.Tensor | None = None  # (rows, vocab) after the last column read so far

    @classmethod
    def start(
        cls, jobs: list[Job], cache: Any, device: torch.device, prefixes: list[tuple[Prefix, int] | None] | None = None
    ) -> Prefill:
        """A prefill of ``jobs``' prompts into ``cache`` (empty). ``prefixes``: for each job, a stored
        prefix and how many of its tokens the prompt starts with, or None."""
        found = prefixes or [None] * len(jobs)
        reused = [hit[1] if hit is not None else 0 for hit in found]
        shared = max(reused)
        rest = [len(job.prompt.ids) - count for job, count in zip(jobs, reused, strict=True)]
        width = shared + max(rest)
        mask = torch.zeros(len(jobs), width, dtype=torch.long, device=device)
        for row, (count, left) in enumerate(zip(reused, rest, strict=True)):
            mask[row, shared - count : shared] = 1
            mask[row, width - left :] = 1
        if shared:
            _fill(cache, found, shared)
        return cls(jobs, cache, mask, reused, done=shared)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    @property
    def complete(self) -> bool:
        return self.done >= self.width

    def input_ids(self, pad: int, budget: int) -> torch.Tensor:
        """The next prompt columns to read, at most ``budget`` of them, left-padded with ``pad``."""
        columns = min(budget, self.width - self.done)
        ids = torch.full((len(self.jobs), columns), pad, dtype=torch.long)
        for row, job in enumerate(self.jobs):
            rest = job.prompt.ids[self.reused[row] :]
            start = self.width - len(rest)  # the row's first column after its stored prefix
            wanted = rest[max(self.done - start, 0) : self.done + columns - start]
            if wanted:
                ids[row, columns - len(wanted) :] = torch.tensor(wanted, dtype=torch.long)
        return ids.to(self.mask.device)

    def read(self, model: Any, pad: int, budget: int) -> int:
        """Feed the next prompt columns (at most ``budget`` tokens) through ``model``; returns the tokens read."""
        ids = self.input_ids(pad, budget)
        if len(self.jobs) == 1:
            # Position ids default to the cache length onwards, which is right for a lone row.
            output = model(input_ids=ids, past_key_values=self.cache, use_cache=True, logits_to_keep=1)
        else:
            # Several prompts are read in one pass (see Scheduler._take_admitted), left-padded.
            end = self.done + ids.shape[1]
            positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)[:, self.done : end]
            output = model(
                input_ids=ids,
                attention_mask=self.mask[:, :end],
                position_ids=positions,
                past_key_values=self.cache,
                use_cache=True,
                logits_to_keep=1,
            )
        self.done += ids.shape[1]
        self.logits = output.logits[:, -1, :]
        return ids.numel()

    def rows_read(self, max_bytes: int) -> list[tuple[list[int], States]]:
        """Each prompt with its keys and values per layer (real columns only), to store as a prefix.

        Of a prompt whose keys and values take more than ``max_bytes``, the first part that fits.
        """
        rows = [(row, job.prompt.ids, 0) for row, job in enumerate(self.jobs)]
        return _kept(self.cache, self.mask, rows, max_bytes)


def _fill(cache: Any, found: list[tuple[Prefix, int] | None], shared: int) -> None:
    """Put each row's stored prefix, right-aligned in the first ``shared`` columns, into ``cache``'s layers."""
    template = next(hit[0] for hit in found if hit is not None)
    for index, layer in enumerate(cache.layers):
        keys, values = template.layers[index]
        size = (len(found), keys.shape[1], shared, keys.shape[3])
        all_keys = keys.new_zeros(size)
        all_values = values.new_zeros(size)
        for row, hit in enumerate(found):
            if hit is not None:
                entry, count = hit
                all_keys[row, :, shared - count :] = entry.layers[index][0][0, :, :count]
                all_values[row, :, shared - count :] = entry.layers[index][1][0, :, :count]
        layer.update(all_keys, all_values)


def _kept(
    cache: Any, mask: torch.Tensor, rows: list[tuple[int, list[int], int]], max_bytes: int
) -> list[tuple[list[int], States]]:
    """For each (row, ids, stored): ``ids`` with the row's keys and values per layer (its real columns), copied.

    Only as many leading tokens as fit in ``max_bytes`` (keys at a position depend only on the tokens
    up to it, so a first part is a prefix like any other). A row is left out, uncopied, when no more
    of it fits than its first ``stored`` tokens, which are in the store already.
    """
    per_token = sum(2 * layer.keys[0, :, :1].numel() * layer.keys.element_size() for layer in cache.layers)
    fitting = max_bytes // per_token
    kept = []
    for row, ids, stored in rows:
        ids = ids[:fitting]
        if len(ids) <= stored:
            continue
        columns = mask[row].nonzero().squeeze(1)[: len(ids)]
        layers = [(_columns(layer.keys, row, columns), _columns(layer.values, row, columns)) for layer in cache.layers]
        kept.append((ids, layers))
    return kept


def _columns(states: torch.Tensor, row: int, columns: torch.Tensor) -> torch.Tensor:
    # (1, heads, len(columns), head_dim): a copy, so the stored prefix outlives the batch's cache.
    return states[row : row + 1].index_select(2, columns)


# -- the rows decoded together -----------------------------------------------------


class Batch:
    """The rows decoded together: their jobs, KV cache and per-row tensors.

    ``mask`` covers the cache columns (1 = a real token, 0 = left padding);
    ``tokens`` holds each row's newest token, not yet in the cache;
    ``positions`` its position id (the row's real length so far).
    """

    def __init__(self, jobs: list[Job], cache: Any, mask: torch.Tensor, first: torch.Tensor, sampler: Sampler) -> None:
        self.jobs = list(jobs)
        self.cache = cache
        self.mask = mask
        self.tokens = first.view(-1, 1).to(mask.device)
        self.positions = mask.sum(dim=1, keepdim=True)
        self.sampler = sampler
        self.padded = not bool(mask.all())

    @property
    def size(self) -> int:
        return len(self.jobs)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def forward(self, model: Any, lean: Any = None) -> torch.Tensor:
        """Run one decoding step; returns float32 logits (rows, vocab) for each row's next token.

        ``lean``: a LeanDecoder for ``model`` (lean.py), else the generic forward runs.
        """
        mask = F.pad(self.mask, (0, 1), value=1)
        if lean is not None:
            logits = lean.step(self.tokens, self.positions, self.cache, mask if self.padded else None)
            self.mask = mask
            self.positions = self.positions + 1
            return logits
        output = model(
            input_ids=self.tokens,
            # Without padding, no mask lets SDPA take its plain causal path, as a lone request does.
            attention_mask=mask if self.padded else None,
            position_ids=self.positions,
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.mask = mask
        self.positions = self.positions + 1
        return output.logits[:, -1, :].float()

    def advance(self, tokens: torch.Tensor) -> None:
        """Make ``tokens`` (rows,) the next input of each row."""
        self.tokens = tokens.view(-1, 1).to(self.mask.device)
        self.sampler.observe(tokens)

    def merge(self, other: Batch) -> None:
        """Append ``other``'s rows, left-padding whichever side is shorter."""
        width = max(self.width, other.width)
        self._left_pad(width - self.width)
        other._left_pad(width - other.width)
        for mine, theirs in zip(self.cache.layers, other.cache.layers, strict=True):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, other.mask])
        self.tokens = torch.cat([self.tokens, other.tokens])
        self.positions = torch.cat([self.positions, other.positions])
        self.sampler.extend(other.sampler)
        self.jobs += other.jobs
        self.padded = not bool(self.mask.all())

    def keep(self, rows: list[int]) -> None:
        """Keep only ``rows`` (indices into ``jobs``), then trim all-padding columns."""
        index = torch.tensor(rows, dtype=torch.long, device=self.mask.device)
        for layer in self.cache.layers:
            layer_index = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(0, layer_index)
            layer.values = layer.values.index_select(0, layer_index)
        self.mask = self.mask.index_select(0, index)
        self.tokens = self.tokens.index_select(0, index)
        self.positions = self.positions.index_select(0, index)
        self.sampler.select(index.to(self.sampler.history.device))
        self.jobs = [self.jobs[row] for row in rows]
        # Leading columns that are padding in every row (a row may have padding inside: see Prefill).
        unused = int(self.mask.any(dim=0).int().argmax())
        if unused:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, unused:, :]
                layer.values = layer.values[:, :, unused:, :]
            self.mask = self.mask[:, unused:]
        self.padded = not bool(self.mask.all())

    def rows_seen(self, rows: list[int], max_bytes: int) -> list[tuple[list[int], States]]:
        """Each of ``rows``' prompt and reply so far with its keys and values, to store as a prefix.

        A row's newest token is not in the cache yet (it would be read by the
        next step), so it is left out. Of a row whose keys and values take more
        than ``max_bytes``, the first part that fits. A row that would add
        nothing to its prompt, stored as it was read (Prefill.rows_read), is
        left out: one with no other token, or whose prompt alone fills ``max_bytes``.
        """
        leaving = [(row, self.jobs[row]) for row in rows]
        seen = [(row, [*job.prompt.ids, *job.tokens[:-1]], len(job.prompt.ids)) for row, job in leaving]
        return _kept(self.cache, self.mask, seen, max_bytes)

    def without(self, rows: list[int]) -> Batch | None:
        """This batch without ``rows``; None when no row is left."""
        leaving = set(rows)
        keep = [row for row in range(self.size) if row not in leaving]
        if not keep:
            return None
        self.keep(keep)
        return self

    def _left_pad(self, columns: int) -> None:
        if columns <= 0:
            return
        for layer in self.cache.layers:
            layer.keys = F.pad(layer.keys, (0, 0, columns, 0))
            layer.values = F.pad(layer.values, (0, 0, columns, 0))
        self.mask = F.pad(self.mask, (columns, 0))
        self.padded = True


def cache_is_mergeable(model: Any) -> bool:
    """Whether rows' caches can be padded and concatenated: every layer a plain DynamicLayer.

    Sliding-window, linear-attention or quantized caches keep extra per-row
    state, so such models are served one request at a time instead.
    """
    try:
        cache = DynamicCache(config=model.config)
    except (TypeError, ValueError, AttributeError):
        return False
    return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)
