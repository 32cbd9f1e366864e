"""Continuous batching: one thread owns the model and decodes every live reply together.

Each step of the scheduler thread feeds the newest token of every active row
through the model at once (one forward pass, a shared DynamicCache), samples
the next token of every row with that row's own settings, and hands the new
text to each row's reader. Rows are independent:

* a new request is prefilled on its own, then merged into the running batch
  by left-padding the shorter side's cache and attention mask;
* a finished or cancelled row leaves at once (``index_select`` on the batch
  dimension), and columns that became padding for every row are trimmed;
* positions are per row, so a row's keys never move relative to each other and
  a greedy row decodes the same tokens as it would alone.

Requests beyond ``max_batch_size`` wait in a bounded FIFO queue, told their
place whenever it changes; beyond ``max_queue`` waiting, ``submit`` raises
QueueFull.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)
from transformers.cache_utils import DynamicLayer

from .errors import EngineClosed, QueueFull
from .params import GenerationParams
from .prompts import Prompt
from .streaming import Chunk, Event, Finished, IncrementalDetokenizer, Queued, Result, Started

logger = logging.getLogger(__name__)

_job_ids = itertools.count(1)

# Top-p first looks for the nucleus among this many most likely tokens.
NUCLEUS_CANDIDATES = 256
# The top_p a greedy row carries: any value below 1 (it never samples).
NUCLEUS_OFF = 0.5
# Prompt tokens read per scheduler iteration, between two decoding steps.
PREFILL_CHUNK = 512


@dataclass
class EngineStats:
    """Counters kept by the scheduler thread (read them from anywhere; they only grow).

    ``max_rows`` is the most rows ever decoded together in one step; ``joins``
    counts requests merged into a batch that already had rows;
    ``generate_calls`` counts ``model.generate`` calls made by generate_batch.
    """

    submitted: int = 0
    started: int = 0
    finished: int = 0
    cancelled: int = 0
    errors: int = 0
    prefills: int = 0
    joins: int = 0
    decode_steps: int = 0
    tokens_generated: int = 0
    max_rows: int = 0
    generate_calls: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a plain dict."""
        return asdict(self)


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
class _Prefill:
    """A request whose prompt is being read into its own cache, a chunk at a time."""

    job: Job
    cache: Any
    done: int = 0  # prompt tokens already in the cache
    logits: torch.Tensor | None = None  # after the last token read so far


# -- sampling -------------------------------------------------------------------


class Sampler:
    """Per-row sampling settings held as tensors, so one call samples every row.

    Order as in transformers: repetition penalty, then greedy argmax or
    temperature, top-p and a multinomial draw. ``history`` holds each row's
    tokens so far (prompt included) for the repetition penalty, left-padded
    with the row's own first token: penalizing a token twice writes the same
    value twice, so the padding changes nothing.

    Every full-vocabulary operation costs a pass over ~50k logits per row per
    step, so the common cases take shortcuts: the penalty touches only the
    history's tokens (gather/scatter, as transformers does), and top-p works
    on the 256 most likely tokens whenever they hold the whole nucleus.
    """

    def __init__(
        self,
        temperature: torch.Tensor,
        top_p: torch.Tensor,
        penalty: torch.Tensor,
        greedy: torch.Tensor,
        history: torch.Tensor,
    ) -> None:
        self.temperature, self.top_p, self.penalty = temperature, top_p, penalty
        self.greedy, self.history = greedy, history
        self._refresh()

    @classmethod
    def for_rows(
        cls, params: Sequence[GenerationParams], prompts: Sequence[Sequence[int]], device: torch.device
    ) -> Sampler:
        """A sampler for rows with these params whose prompts were these token ids."""

        def column(values: list[float]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)

        # Greedy rows never use temperature or top-p; these values keep the
        # shared maths finite and the fast top-p path open.
        temperature = column([1.0 if p.greedy else p.temperature for p in params])
        top_p = column([NUCLEUS_OFF if p.greedy else p.top_p for p in params])
        penalty = column([p.repetition_penalty for p in params])
        greedy = torch.tensor([p.greedy for p in params], dtype=torch.bool, device=device)
        width = max(len(ids) for ids in prompts)
        history = torch.tensor(
            [[ids[0]] * (width - len(ids)) + list(ids) for ids in prompts], dtype=torch.long, device=device
        )
        return cls(temperature, top_p, penalty, greedy, history)

    def _refresh(self) -> None:
        # Python flags, computed when rows change rather than every step, let a
        # step skip whole stages (and their device syncs).
        sampled = ~self.greedy
        self.all_greedy = not bool(sampled.any())
        self.any_greedy = bool(self.greedy.any())
        self.any_penalty = bool((self.penalty != 1).any())
        self.any_top_p = bool((self.top_p[sampled] < 1).any())
        self.any_full = bool((self.top_p[sampled] >= 1).any())

    def extend(self, other: Sampler) -> None:
        """Append ``other``'s rows after this sampler's."""
        width = max(self.history.shape[1], other.history.shape[1])
        self.temperature = torch.cat([self.temperature, other.temperature])
        self.top_p = torch.cat([self.top_p, other.top_p])
        self.penalty = torch.cat([self.penalty, other.penalty])
        self.greedy = torch.cat([self.greedy, other.greedy])
        self.history = torch.cat([_pad_history(self.history, width), _pad_history(other.history, width)])
        self._refresh()

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index``."""
        self.temperature = self.temperature.index_select(0, index)
        self.top_p = self.top_p.index_select(0, index)
        self.penalty = self.penalty.index_select(0, index)
        self.greedy = self.greedy.index_select(0, index)
        self.history = self.history.index_select(0, index)
        self._refresh()

    def to(self, device: torch.device) -> Sampler:
        """This sampler with its tensors on ``device`` (where the logits are, under a device map)."""
        if self.history.device != device:
            self.temperature, self.top_p, self.penalty, self.greedy, self.history = (
                t.to(device) for t in (self.temperature, self.top_p, self.penalty, self.greedy, self.history)
            )
        return self

    def observe(self, tokens: torch.Tensor) -> None:
        """Record each row's newly generated token (shape (rows,)) for the repetition penalty."""
        if self.any_penalty:
            self.history = torch.cat([self.history, tokens.view(-1, 1)], dim=1)

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of every row, shape (rows,), from float32 logits (rows, vocab).

        May modify ``logits`` in place.
        """
        logits = self._penalize(logits)
        if self.all_greedy:
            return logits.argmax(dim=-1)
        sampled = self._sample(logits)
        if not self.any_greedy:
            return sampled
        return torch.where(self.greedy, logits.argmax(dim=-1), sampled)

    def scores_for_generate(self, logits: torch.Tensor) -> torch.Tensor:
        """Processed logits for ``model.generate``: greedy rows reduced to their argmax.

        generate() samples every row alike when any row samples, so a greedy
        row keeps only its best token (-inf elsewhere) and the draw is exact.
        """
        logits = self._penalize(logits)
        if self.all_greedy:
            return logits
        warped = self._nucleus(logits / self.temperature)
        if not self.any_greedy:
            return warped
        best = torch.full_like(logits, float("-inf"))
        best.scatter_(1, logits.argmax(dim=-1, keepdim=True), 0.0)
        return torch.where(self.greedy.unsqueeze(1), best, warped)

    def _penalize(self, logits: torch.Tensor) -> torch.Tensor:
        if not self.any_penalty:
            return logits
        scores = logits.gather(1, self.history)
        scores = torch.where(scores < 0, scores * self.penalty, scores / self.penalty)
        return logits.scatter_(1, self.history, scores)

    def _sample(self, logits: torch.Tensor) -> torch.Tensor:
        probabilities = (logits / self.temperature).softmax(dim=-1)
        if self.any_top_p and not self.any_full:
            top, order = probabilities.topk(min(NUCLEUS_CANDIDATES, probabilities.shape[-1]), dim=-1)
            cumulative = top.cumsum(dim=-1)
            if bool((cumulative[:, -1:] >= self.top_p).all()):
                # Keep the most likely tokens until their mass reaches top_p (the
                # token that crosses it included), as TopPLogitsWarper does.
                kept = top.masked_fill(cumulative - top >= self.top_p, 0.0)
                return order.gather(1, torch.multinomial(kept, num_samples=1)).squeeze(1)
        if self.any_top_p:
            probabilities = self._nucleus(probabilities.log()).softmax(dim=-1)
        return torch.multinomial(probabilities, num_samples=1).squeeze(1)

    def _nucleus(self, scores: torch.Tensor) -> torch.Tensor:
        """``scores`` with tokens outside each row's top-p nucleus set to -inf (full sort)."""
        if not self.any_top_p:
            return scores
        ordered, order = torch.sort(scores, descending=False)
        cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative <= (1 - self.top_p)
        drop[:, -1] = False  # always keep the most likely token
        return scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))


def _pad_history(history: torch.Tensor, width: int) -> torch.Tensor:
    """Left-pad ``history`` to ``width`` columns with each row's own first token."""
    missing = width - history.shape[1]
    if missing <= 0:
        return history
    return torch.cat([history[:, :1].expand(-1, missing), history], dim=1)


# -- the rows decoded together -----------------------------------------------------


class Batch:
    """The rows decoded together: their jobs, KV cache and per-row tensors.

    ``mask`` covers the cache columns (1 = a real token, 0 = left padding);
    ``tokens`` holds each row's newest token, not yet in the cache;
    ``positions`` its position id (the row's real length so far).
    """

    def __init__(
        self,
        job: Job,
        cache: Any,
        prompt_length: int,
        first_token: torch.Tensor,
        sampler: Sampler,
        device: torch.device,
    ) -> None:
        self.jobs = [job]
        self.cache = cache
        self.mask = torch.ones(1, prompt_length, dtype=torch.long, device=device)
        self.tokens = first_token.view(1, 1).to(device)
        self.positions = torch.tensor([[prompt_length]], dtype=torch.long, device=device)
        self.sampler = sampler
        self.padded = False

    @property
    def size(self) -> int:
        return len(self.jobs)

    @property
    def width(self) -> int:
        return self.mask.shape[1]

    def forward(self, model: Any) -> torch.Tensor:
        """Run one decoding step; returns float32 logits (rows, vocab) for each row's next token."""
        mask = F.pad(self.mask, (0, 1), value=1)
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
        # Real tokens sit right-aligned in each row, so the longest row bounds what is needed.
        unused = self.width - int(self.mask.sum(dim=1).max())
        if unused:
            for layer in self.cache.layers:
                layer.keys = layer.keys[:, :, unused:, :]
                layer.values = layer.values[:, :, unused:, :]
            self.mask = self.mask[:, unused:]
        self.padded = not bool(self.mask.all())

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


# -- the scheduler thread ------------------------------------------------------------


class Scheduler:
    """The thread that owns the model: admits requests, prefills, decodes, finishes.

    Other threads talk to it through ``submit`` (a streaming job), ``call`` (run
    a function on this thread, for generate_batch) and ``close``; jobs hear
    back through their ``deliver`` callback, called on this thread.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int,
        max_queue: int,
        eos_token_ids: set[int],
        device: torch.device,
        stats: EngineStats | None = None,
        num_threads: int = 0,
    ) -> None:
        self.model = model
        self.num_threads = num_threads
        self.tokenizer = tokenizer
        self.device = device
        self.max_queue = max_queue
        self.max_batch_size = max_batch_size
        if max_batch_size > 1 and not cache_is_mergeable(model):
            logger.warning("this model's cache cannot be batched; serving one request at a time")
            self.max_batch_size = 1
        self.stats = stats if stats is not None else EngineStats()
        self.eos_token_ids = frozenset(eos_token_ids)
        self.busy_since: float | None = None
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()  # no row yet, in arrival order
        self._admitted: deque[Job] = deque()  # a row is reserved, prefill pending
        self._prefilling: deque[_Prefill] = deque()  # prompts being read, touched by the thread only
        self._slots = 0  # rows reserved: admitted plus running
        self._calls: deque[tuple[Callable[[], Any], Future]] = deque()
        self._closed = False
        self._pauses = 0
        self._batch: Batch | None = None  # touched by the scheduler thread only
        self._thread = threading.Thread(target=self._run, name="inference-scheduler", daemon=True)
        self._thread.start()

    # -- other threads -------------------------------------------------------

    def check_room(self) -> None:
        """Raise QueueFull (or EngineClosed) now if a submit would be refused."""
        with self._cond:
            self._check_open()
            if self._slots >= self.max_batch_size and len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are already waiting")

    def submit(self, job: Job) -> None:
        """Queue ``job``: a free row starts it at the next step, else it waits its turn.

        Raises QueueFull when ``max_queue`` jobs already wait, EngineClosed after close().
        """
        with self._cond:
            self.check_room()
            self.stats.submitted += 1
            if self._slots < self.max_batch_size:
                self._reserve(job)
            else:
                self._waiting.append(job)
                self._renumber_waiting()
            self._cond.notify()

    def call(self, function: Callable[[], Any]) -> Any:
        """Run ``function`` on the scheduler thread between two steps; returns its result.

        Blocks the calling thread. Re-raises what ``function`` raises; raises
        EngineClosed if the engine closes first.
        """
        future: Future = Future()
        with self._cond:
            self._check_open()
            self._calls.append((function, future))
            self._cond.notify()
        return future.result()

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Hold the thread between steps while inside; requests submitted meanwhile start together.

        The step in progress, if any, completes. Tests use this to put several
        requests into the same first step; nothing else needs it.
        """
        with self._cond:
            self._pauses += 1
        try:
            yield
        finally:
            with self._cond:
                self._pauses -= 1
                self._cond.notify()

    def wake(self) -> None:
        """Make the thread look at its jobs now (after a cancel, say)."""
        with self._cond:
            self._cond.notify()

    def heartbeat(self) -> None:
        """Note progress from inside a long step (a generate_batch call), so readers do not think it stuck."""
        if self.busy_since is not None:
            self.busy_since = time.monotonic()

    def stall_reason(self, timeout: float) -> str | None:
        """Why readers should stop waiting: the thread died or one step ran over ``timeout`` s."""
        if not self._thread.is_alive():
            return "the inference scheduler has stopped"
        since = self.busy_since
        if since is not None and time.monotonic() - since > timeout:
            return f"the inference scheduler is stuck: one step has run for over {timeout:g}s"
        return None

    def close(self, timeout: float = 30.0) -> None:
        """Stop the thread; unfinished requests end with finish_reason "error"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the inference engine is closed")

    def _reserve(self, job: Job) -> None:
        # Caller holds the lock.
        self._slots += 1
        job.holds_slot = True
        self._admitted.append(job)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        if self.num_threads:
            # Set on this thread: torch's intra-op thread count is per calling thread.
            torch.set_num_threads(self.num_threads)
        with torch.inference_mode():
            self._warm_up()
            while self._wait_for_work():
                self.busy_since = time.monotonic()
                try:
                    self._iteration()
                # The boundary of the model thread: whatever a step raises
                # (a CUDA error, out of memory, a bug) fails the rows involved,
                # not the whole server.
                except Exception as exc:  # noqa: BLE001
                    logger.exception("inference step failed; failing %d active rows", self._active_count())
                    self._fail_batch(exc)
                finally:
                    self.busy_since = None
            self._shut_down()

    def _warm_up(self) -> None:
        # The first forward pass pays for kernel selection and allocator set-up;
        # pay it now rather than in the first user's time to first token.
        try:
            ids = torch.tensor([[self.tokenizer.pad_token_id or 0] * 2], device=self.device)
            self.model(input_ids=ids, use_cache=False, logits_to_keep=1)
        except Exception:  # noqa: BLE001 - a failing warm-up shows again, with context, on a real request
            logger.warning("warm-up forward pass failed", exc_info=True)

    def _wait_for_work(self) -> bool:
        with self._cond:
            while not self._closed and (
                # Waiting jobs alone are no work: they wait for a row, which only a running job frees.
                self._pauses or not (self._calls or self._admitted or self._prefilling or self._batch)
            ):
                self._cond.wait()
            return not self._closed

    def _iteration(self) -> None:
        self._run_calls()
        self._drop_cancelled_waiting()
        self._prefill_some()
        if self._batch is not None:
            self._step()

    def _active_count(self) -> int:
        return self._batch.size if self._batch is not None else 0

    def _run_calls(self) -> None:
        while True:
            with self._cond:
                if not self._calls:
                    return
                function, future = self._calls.popleft()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the caller, who re-raises it
                future.set_exception(exc)

    def _drop_cancelled_waiting(self) -> None:
        with self._cond:
            gone = [job for job in self._waiting if job.cancelled]
            for job in gone:
                self._waiting.remove(job)
            if gone:
                self._renumber_waiting()
        for job in gone:
            self._finish(job, "cancelled")

    def _prefill_some(self) -> None:
        """Read up to PREFILL_CHUNK prompt tokens of starting requests; finished ones join the batch.

        Long prompts are read a chunk per iteration, between decoding steps,
        so a pasted document delays the other rows by a chunk, not by its
        whole length (and no single step runs long enough to look stuck).
        """
        budget = PREFILL_CHUNK
        while budget > 0:
            item = self._next_prefill()
            if item is None:
                return
            try:
                budget -= self._prefill_chunk(item, budget)
                if item.done < len(item.job.prompt.ids):
                    continue
                self._prefilling.popleft()
                self._join(item)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one long prompt: fail that request only
                logger.exception("prefill of request %d failed", item.job.id)
                if item in self._prefilling:
                    self._prefilling.remove(item)
                self._finish(item.job, "error", f"{type(exc).__name__}: {exc}")

    def _next_prefill(self) -> _Prefill | None:
        """The request to read prompt tokens for next, starting an admitted one if none is under way."""
        while True:
            if self._prefilling:
                item = self._prefilling[0]
                if not item.job.cancelled:
                    return item
                self._prefilling.popleft()
                self._finish(item.job, "cancelled")
                continue
            with self._cond:
                if not self._admitted or self._pauses:
                    return None
                job = self._admitted.popleft()
            if job.cancelled:
                self._finish(job, "cancelled")
                continue
            job.started_at = time.monotonic()
            job.detokenizer = IncrementalDetokenizer(self.tokenizer, job.prompt.ids)
            job.deliver(Started(prompt_tokens=len(job.prompt.ids), dropped_turns=job.prompt.dropped_turns))
            self.stats.started += 1
            self._prefilling.append(_Prefill(job, DynamicCache(config=self.model.config)))

    def _prefill_chunk(self, item: _Prefill, budget: int) -> int:
        """Feed the next ``budget`` prompt tokens of ``item`` through the model; returns how many."""
        ids = item.job.prompt.ids[item.done : item.done + budget]
        # Position ids default to the cache length onwards, which is right for a lone row.
        output = self.model(
            input_ids=torch.tensor([ids], dtype=torch.long, device=self.device),
            past_key_values=item.cache,
            use_cache=True,
            logits_to_keep=1,
        )
        item.done += len(ids)
        item.logits = output.logits[:, -1, :]
        return len(ids)

    def _join(self, item: _Prefill) -> None:
        """Sample the first token of a fully read prompt, emit it, and merge the row into the batch."""
        job = item.job
        # Sampling happens where the logits are: the last device under a device map.
        sampler = Sampler.for_rows([job.params], [job.prompt.ids], item.logits.device)
        first = sampler.choose(item.logits.float())
        sampler.observe(first)
        self.stats.prefills += 1
        job.first_token_at = time.monotonic()
        row = Batch(job, item.cache, len(job.prompt.ids), first, sampler, self.device)
        if self._accept(job, int(first[0])):
            return
        if self._batch is None:
            self._batch = row
        else:
            self._batch.merge(row)
            self.stats.joins += 1

    def _step(self) -> None:
        """One decoding step for every active row."""
        batch = self._batch
        cancelled = [row for row, job in enumerate(batch.jobs) if job.cancelled]
        for row in cancelled:
            self._finish(batch.jobs[row], "cancelled")
        if cancelled and not self._remove(cancelled):
            return
        batch = self._batch
        self.stats.decode_steps += 1
        self.stats.max_rows = max(self.stats.max_rows, batch.size)
        tokens = batch.sampler.choose(batch.forward(self.model))
        batch.advance(tokens)
        done = [
            row
            for row, (job, token) in enumerate(zip(batch.jobs, tokens.tolist(), strict=True))
            if self._accept(job, token)
        ]
        if done:
            self._remove(done)

    def _remove(self, rows: list[int]) -> bool:
        """Drop ``rows`` from the batch; returns whether any row is left."""
        leaving = set(rows)
        keep = [row for row in range(self._batch.size) if row not in leaving]
        if not keep:
            self._batch = None
            return False
        self._batch.keep(keep)
        return True

    def _accept(self, job: Job, token: int) -> bool:
        """Record one generated token of ``job``; returns True if that finished it."""
        job.tokens.append(token)
        self.stats.tokens_generated += 1
        if token in self.eos_token_ids:
            self._finish(job, "stop")
            return True
        text = job.detokenizer.push(token)
        if text:
            job.deliver(Chunk(text))
        if len(job.tokens) >= job.prompt.max_new_tokens:
            self._finish(job, "length")
            return True
        return False

    def _finish(self, job: Job, reason: str, error: str = "") -> None:
        """Send ``job``'s last text and its Finished event, and free its row. Only the first call counts."""
        if job.finished:
            return
        job.finished = True
        if job.detokenizer is not None:
            tail = job.detokenizer.flush()
            if tail:
                job.deliver(Chunk(tail))
        result = job.result(reason, error)
        job.deliver(Finished(result))
        self.stats.finished += 1
        self.stats.cancelled += reason == "cancelled"
        self.stats.errors += reason == "error"
        logger.info(
            "request %d %s: %d prompt + %d completion tokens, ttft %d ms, %.1f tokens/s",
            job.id,
            reason,
            result.prompt_tokens,
            result.completion_tokens,
            result.ttft_ms,
            result.tokens_per_s,
        )
        if job.holds_slot:
            job.holds_slot = False
            self._release_slot()

    def _release_slot(self) -> None:
        with self._cond:
            self._slots -= 1
            if self._waiting and not self._closed:
                self._reserve(self._waiting.popleft())
                self._renumber_waiting()

    def _renumber_waiting(self) -> None:
        # Caller holds the lock. Tell each waiting job its place if it changed.
        for position, job in enumerate(self._waiting, start=1):
            if job.position != position:
                job.position = position
                job.deliver(Queued(position=position))

    def _fail_batch(self, exc: BaseException) -> None:
        batch, self._batch = self._batch, None
        for job in batch.jobs if batch is not None else ():
            self._finish(job, "error", f"{type(exc).__name__}: {exc}")

    def _shut_down(self) -> None:
        """Finish everything still held once the engine is closed."""
        self._fail_batch(EngineClosed("the inference engine was closed"))
        left = [item.job for item in self._prefilling]
        self._prefilling.clear()
        with self._cond:
            left += list(self._admitted) + list(self._waiting)
            self._admitted.clear()
            self._waiting.clear()
            calls = list(self._calls)
            self._calls.clear()
        for job in left:
            self._finish(job, "error", "EngineClosed: the inference engine was closed")
        for _, future in calls:
            if future.set_running_or_notify_cancel():
                future.set_exception(EngineClosed("the inference engine was closed"))


# -- generate_batch: one model.generate call for a list -------------------------------


def generate_together(
    model: Any,
    tokenizer: Any,
    jobs: list[Job],
    *,
    eos_token_ids: set[int],
    device: torch.device,
    on_step: Callable[[], None] | None = None,
) -> list[Result]:
    """Run ``jobs`` as ONE left-padded ``model.generate`` call; results in input order.

    Each row keeps its own temperature, top-p, repetition penalty and
    max_new_tokens (a logits processor and a per-row stopping criterion), and
    its cancel event stops it at the next step. ``on_step`` is called once a
    decoding step.
    """
    width = max(len(job.prompt.ids) for job in jobs)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_token_ids)
    input_ids = torch.full((len(jobs), width), pad, dtype=torch.long)
    attention_mask = torch.zeros((len(jobs), width), dtype=torch.long)
    for row, job in enumerate(jobs):
        input_ids[row, width - len(job.prompt.ids) :] = torch.tensor(job.prompt.ids)
        attention_mask[row, width - len(job.prompt.ids) :] = 1
    sampler = Sampler.for_rows([job.params for job in jobs], [job.prompt.ids for job in jobs], device)
    limits = [job.prompt.max_new_tokens for job in jobs]
    stopper = _RowStop(width, limits, [job.request.cancel for job in jobs])
    timer = _FirstTokenTimer()
    config = GenerationConfig.from_dict(model.generation_config.to_dict())
    config.update(
        do_sample=not sampler.all_greedy,
        max_new_tokens=max(limits),
        min_new_tokens=None,
        num_beams=1,
        repetition_penalty=1.0,
        eos_token_id=sorted(eos_token_ids),
        pad_token_id=pad,
    )
    # The sampler applies each row's own settings; generate's own must be
    # neutral (top_k would otherwise default to 50), or unset when greedy.
    if config.do_sample:
        config.update(temperature=1.0, top_p=1.0, top_k=0)
    else:
        config.update(temperature=None, top_p=None, top_k=None)
    started = time.monotonic()
    for job in jobs:
        job.started_at = started
    output = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        logits_processor=LogitsProcessorList([_SamplerProcessor(sampler, on_step)]),
        stopping_criteria=StoppingCriteriaList([stopper]),
        streamer=timer,
    )
    generated = output[:, width:].tolist()
    return [
        _row_result(job, generated[row], stopper, row, timer.first_at, tokenizer, eos_token_ids)
        for row, job in enumerate(jobs)
    ]


def _row_result(
    job: Job,
    generated: list[int],
    stopper: _RowStop,
    row: int,
    first_at: float,
    tokenizer: Any,
    eos_token_ids: set[int],
) -> Result:
    stop_reason, stopped_at = stopper.stopped.get(row, ("", None))
    tokens = generated[:stopped_at] if stopped_at is not None else generated
    reason = stop_reason or "length"
    for index, token in enumerate(tokens):
        if token in eos_token_ids:
            tokens, reason = tokens[: index + 1], "stop"
            break
    job.first_token_at = first_at if tokens else 0.0
    job.tokens = tokens
    job.detokenizer = IncrementalDetokenizer(tokenizer, job.prompt.ids)
    for token in tokens:
        if token not in eos_token_ids:
            job.detokenizer.push(token)
    job.detokenizer.flush()
    return job.result(reason)


class _SamplerProcessor(LogitsProcessor):
    """A transformers LogitsProcessor applying a Sampler's per-row settings."""

    def __init__(self, sampler: Sampler, on_step: Callable[[], None] | None = None) -> None:
        self.sampler = sampler
        self.on_step = on_step
        self.calls = 0

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.on_step is not None:
            self.on_step()
        self.sampler.to(scores.device)
        if self.calls:
            # The previous step's token is now the last column.
            self.sampler.observe(input_ids[:, -1].to(scores.device))
        self.calls += 1
        return self.sampler.scores_for_generate(scores.float())


class _RowStop(StoppingCriteria):
    """A per-row StoppingCriteria: each row's own max_new_tokens and cancel event.

    Shaped like transformers' MaxTimeCriteria, but answering per row.
    Records where and why each row stopped.
    """

    def __init__(self, prompt_width: int, limits: list[int], cancels: list[threading.Event]) -> None:
        self.prompt_width = prompt_width
        self.limits = limits
        self.cancels = cancels
        self.stopped: dict[int, tuple[str, int]] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: Any = None, **kwargs: Any) -> torch.BoolTensor:
        length = input_ids.shape[1] - self.prompt_width
        for row, (limit, cancel) in enumerate(zip(self.limits, self.cancels, strict=True)):
            if row in self.stopped:
                continue
            if cancel.is_set():
                self.stopped[row] = ("cancelled", length)
            elif length >= limit:
                self.stopped[row] = ("length", limit)
        done = [row in self.stopped for row in range(len(self.limits))]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _FirstTokenTimer:
    """A generate() streamer that only notes when the first new tokens arrive."""

    def __init__(self) -> None:
        self.puts = 0
        self.first_at = 0.0

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:  # the first put is the prompt
            self.first_at = time.monotonic()

    def end(self) -> None:
        pass
