"""Continuous batching: one thread owns the model and decodes every live reply together.

Each step of the scheduler thread feeds the newest token of every active row
through the model at once (one forward pass, a shared cache: see ``rows.py``),
samples the next token of every row with that row's own settings
(``sampling.py``), and hands the new text to each row's reader. Streamed
replies and ``generate_batch`` lists take this same path.

Requests beyond ``max_batch_size`` wait in a bounded FIFO queue, told their
place whenever it changes; beyond ``max_queue`` waiting, ``submit`` raises
QueueFull.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from .errors import EngineClosed, QueueFull
from .lean import LeanDecoder
from .prefix import PrefixStore
from .rows import Batch, Job, Prefill, cache_is_mergeable
from .sampling import Sampler
from .stats import EngineStats
from .streaming import Chunk, Finished, IncrementalDetokenizer, Queued, Started
from .threads import ThreadChooser

logger = logging.getLogger(__name__)

# Prompt tokens read per scheduler iteration, between two decoding steps.
PREFILL_CHUNK = 512
# Background requests (Request.background) that may wait for an idle engine; more are refused.
BACKGROUND_QUEUE = 64
# Keys and values of recently read prompts kept for reuse (prefix.py): about 2,800 tokens of SmolLM2-135M.
PREFIX_BYTES = 64 * 2**20


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
        lean_decode: bool = True,
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
        # Stored prefixes are spliced into a fresh cache, which only plain per-token layers allow.
        self.prefixes = PrefixStore(PREFIX_BYTES) if cache_is_mergeable(model) else None
        self.stats = stats if stats is not None else EngineStats()
        # Decoding steps take the lean path where the architecture has one (lean.py).
        self.lean = LeanDecoder.for_model(model) if lean_decode else None
        # num_threads 0 on a CPU: chosen step by step by the wall clock (threads.py), set on the thread.
        self.threads: ThreadChooser | None = None
        self.eos_token_ids = frozenset(eos_token_ids)
        # Fills the left padding of prompts read together (masked out, so any id works).
        self.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_token_ids, default=0)
        )
        self.busy_since: float | None = None
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()  # no row yet, in arrival order
        self._background: deque[Job] = deque()  # background jobs with no row: they run only while nothing else does
        self._admitted: deque[Job] = deque()  # a row is reserved, prefill pending
        self._prefilling: deque[Prefill] = deque()  # prompts being read, touched by the thread only
        self._slots = 0  # rows reserved: admitted plus running
        self._foreground = 0  # of those, the rows of requests that are not background work
        self._closed = False
        self._pauses = 0
        self._batch: Batch | None = None  # touched by the scheduler thread only
        self._thread = threading.Thread(target=self._run, name="inference-scheduler", daemon=True)
        self._thread.start()
        # A daemon thread still inside torch when the interpreter finalizes
        # aborts the process ("terminate called without an active exception").
        # atexit runs before that, so an engine nobody closed is closed then.
        # The weak reference lets an unused engine be collected meanwhile.
        self._at_exit = _close_at_exit(weakref.ref(self))
        atexit.register(self._at_exit)

    # -- other threads -------------------------------------------------------

    def check_room(self, background: bool = False) -> None:
        """Raise QueueFull (or EngineClosed) now if a submit would be refused (`background`: of background work,
        which waits in a queue of its own)."""
        with self._cond:
            self._check_open()
            if background:
                if len(self._background) >= BACKGROUND_QUEUE:
                    raise QueueFull(f"{len(self._background)} background requests are already waiting")
            elif self._slots >= self.max_batch_size and len(self._waiting) >= self.max_queue:
                raise QueueFull(f"the server is busy: {len(self._waiting)} requests are already waiting")

    def submit(self, job: Job) -> None:
        """Queue ``job``: a free row starts it at the next step, else it waits its turn.

        Raises QueueFull when ``max_queue`` jobs already wait, EngineClosed after close().
        """
        with self._cond:
            self.check_room(job.background)
            self._enqueue([job])

    def submit_all(self, jobs: Sequence[Job]) -> None:
        """Queue ``jobs`` at once, in order, whatever the queue's length (generate_batch's caller waits).

        Jobs that get a row now start in the same step. Raises EngineClosed after close().
        """
        with self._cond:
            self._check_open()
            self._enqueue(jobs)

    def _enqueue(self, jobs: Sequence[Job]) -> None:
        # Caller holds the lock.
        for job in jobs:
            self.stats.submitted += 1
            if job.background:
                if self._idle():
                    self._reserve(job)
                else:
                    self._background.append(job)
            elif self._slots < self.max_batch_size:
                self._reserve(job)
            else:
                self._waiting.append(job)
        self._renumber_waiting()
        self._cond.notify()

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

    def stall_reason(self, timeout: float) -> str | None:
        """Why readers should stop waiting: the thread died or one step ran over ``timeout`` s."""
        if not self._thread.is_alive():
            return "the inference scheduler has stopped"
        since = self.busy_since
        if since is not None and time.monotonic() - since > timeout:
            return f"the inference scheduler is stuck: one step has run for over {timeout:g}s"
        return None

    @property
    def alive(self) -> bool:
        """Whether the scheduler thread is still running."""
        return self._thread.is_alive()

    def close(self, timeout: float = 30.0) -> bool:
        """Stop accepting, end every unfinished job as "cancelled" and join the thread.

        The step in progress completes first (a decoding step or one prefill
        chunk). Every job gets exactly one Finished. Returns whether the thread
        ended within ``timeout`` seconds. Safe to call more than once.
        """
        atexit.unregister(self._at_exit)
        with self._cond:
            self._closed = True
            self._cond.notify()
        if threading.current_thread() is self._thread:
            return False
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning("the inference scheduler did not stop within %gs", timeout)
            return False
        return True

    def _idle(self) -> bool:
        # Caller holds the lock. No request holds a row or waits for one: background work may run.
        return not self._foreground and not self._waiting and self._slots < self.max_batch_size

    def _check_open(self) -> None:
        if self._closed:
            raise EngineClosed("the inference engine is closed")

    def _reserve(self, job: Job) -> None:
        # Caller holds the lock.
        self._slots += 1
        self._foreground += not job.background
        job.holds_slot = True
        self._admitted.append(job)

    # -- the thread ------------------------------------------------------------

    def _run(self) -> None:
        # Set on this thread: torch's intra-op thread count is per calling thread.
        if self.num_threads:
            torch.set_num_threads(self.num_threads)
        elif self.device.type == "cpu" and torch.get_num_threads() > 1:
            self.threads = ThreadChooser((1, torch.get_num_threads()))
            self.threads.apply()
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
                self._pauses or not (self._admitted or self._prefilling or self._batch)
            ):
                self._cond.wait()
            return not self._closed

    def _iteration(self) -> None:
        self._yield_background_rows()
        self._drop_cancelled_waiting()
        self._prefill_some()
        if self._batch is not None:
            self._step()

    def _yield_background_rows(self) -> None:
        """A request holds or wants a row: background work gives up its rows (cancelled, at this step), so
        it never delays a reply nor slows one down; its owner may ask again later."""
        with self._cond:
            if not (self._foreground or self._waiting):
                return
            holders = [job for job in self._admitted if job.background]
        holders += [job for item in self._prefilling for job in item.jobs if job.background]
        holders += [job for job in (self._batch.jobs if self._batch is not None else ()) if job.background]
        for job in holders:
            job.request.cancel.set()

    def _active_count(self) -> int:
        return self._batch.size if self._batch is not None else 0

    def _drop_cancelled_waiting(self) -> None:
        with self._cond:
            gone = [job for job in self._waiting if job.cancelled]
            for job in gone:
                self._waiting.remove(job)
            if gone:
                self._renumber_waiting()
            background = [job for job in self._background if job.cancelled]
            for job in background:
                self._background.remove(job)
            gone += background
        for job in gone:
            self._finish(job, "cancelled")

    def _prefill_some(self) -> None:
        """Read up to PREFILL_CHUNK prompt tokens of starting requests; finished ones join the batch.

        Short prompts admitted together are read together, in one padded
        forward pass, so eight users arriving at once all see their first
        token after one prefill rather than a staircase of eight. A long
        prompt is read a chunk per iteration, between decoding steps, so a
        pasted document delays the other rows by a chunk, not by its whole
        length (and no single step runs long enough to look stuck).
        """
        budget = PREFILL_CHUNK
        while budget > 0:
            item = self._next_prefill(budget)
            if item is None:
                return
            try:
                self.stats.prefill_passes += 1
                budget -= item.read(self.model, self.pad_token_id, budget)
                if not item.complete:
                    continue
                self._prefilling.popleft()
                self._join(item)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory on one long prompt: fail those requests only
                logger.exception("prefill of request(s) %s failed", [job.id for job in item.jobs])
                if item in self._prefilling:
                    self._prefilling.remove(item)
                for job in item.jobs:
                    self._finish(job, "error", f"{type(exc).__name__}: {exc}")

    def _next_prefill(self, budget: int) -> Prefill | None:
        """The prompts to read next: the one under way, else admitted requests that fit ``budget`` together."""
        while self._prefilling:
            # Only a long prompt read in chunks stays here across iterations: a lone row.
            item = self._prefilling[0]
            if not any(job.cancelled for job in item.jobs):
                return item
            self._prefilling.popleft()
            for job in item.jobs:
                self._finish(job, "cancelled")
        jobs = self._take_admitted(budget)
        if not jobs:
            return None
        for job in jobs:
            job.started_at = time.monotonic()
            job.detokenizer = IncrementalDetokenizer(self.tokenizer, job.prompt.ids, job.params.stop)
            job.deliver(Started(prompt_tokens=len(job.prompt.ids), dropped_turns=job.prompt.dropped_turns))
            self.stats.started += 1
        prefixes = [self.prefixes.find(job.prompt.ids) for job in jobs] if self.prefixes is not None else None
        item = Prefill.start(jobs, DynamicCache(config=self.model.config), self.device, prefixes)
        self._prefilling.append(item)
        return item

    def _take_admitted(self, budget: int) -> list[Job]:
        """Admitted requests to prefill together: the first, plus those after it while all fit ``budget``.

        Cancelled ones are finished on the way.
        """
        jobs: list[Job] = []
        while True:
            with self._cond:
                if not self._admitted or self._pauses:
                    return jobs
                job = self._admitted[0]
                width = max([len(job.prompt.ids)] + [len(other.prompt.ids) for other in jobs])
                if jobs and width * (len(jobs) + 1) > budget:
                    return jobs
                self._admitted.popleft()
            if job.cancelled:
                self._finish(job, "cancelled")
            else:
                jobs.append(job)

    def _join(self, item: Prefill) -> None:
        """Sample the first token of fully read prompts, emit it, and merge the rows into the batch."""
        jobs, logits = item.jobs, item.logits
        assert logits is not None, "a complete prefill has logits"
        if self.prefixes is not None:
            for ids, layers in item.rows_read(self.prefixes.max_bytes):
                self.prefixes.add(ids, layers)
        # Sampling happens where the logits are: the last device under a device map.
        sampler = Sampler.for_rows([job.params for job in jobs], [job.prompt.ids for job in jobs], logits.device)
        first = sampler.choose(logits.float())
        sampler.observe(first)
        self.stats.prefills += len(jobs)
        now = time.monotonic()
        for job in jobs:
            job.first_token_at = now
        batch = Batch(jobs, item.cache, item.mask, first, sampler)
        rows = self._end(batch, self._accept_all(batch, first))
        if rows is None:
            return
        if self._batch is None:
            self._batch = rows
        else:
            self._batch.merge(rows)
            self.stats.joins += rows.size

    def _step(self) -> None:
        """One decoding step for every active row."""
        batch = self._batch
        if batch is None:
            return
        cancelled = {row: "cancelled" for row, job in enumerate(batch.jobs) if job.cancelled}
        if cancelled:
            batch = self._batch = self._end(batch, cancelled)
            if batch is None:
                return
        self.stats.decode_steps += 1
        self.stats.max_rows = max(self.stats.max_rows, batch.size)
        if self.threads is not None:
            self.threads.apply()
        started = time.perf_counter()
        tokens = batch.sampler.choose(batch.forward(self.model, self.lean))
        if self.threads is not None:
            self.threads.record(batch.size, time.perf_counter() - started)
        batch.advance(tokens)
        self._batch = self._end(batch, self._accept_all(batch, tokens))

    def _accept_all(self, batch: Batch, tokens: torch.Tensor) -> dict[int, str]:
        """Give each row its new token; returns the rows that ended there, with why."""
        self.stats.tokens_generated += batch.size
        endings = {}
        for row, (job, token) in enumerate(zip(batch.jobs, tokens.tolist(), strict=True)):
            reason = job.take(token, self.eos_token_ids)
            if reason:
                endings[row] = reason
        return endings

    def _end(self, batch: Batch, endings: dict[int, str]) -> Batch | None:
        """Finish the rows in ``endings`` (row: reason); returns the batch without them (None if empty).

        Each row's prompt and reply are stored first, as a prefix (the
        conversation's next turn starts with both), so whoever sees the end
        also finds them stored.
        """
        if not endings:
            return batch
        if self.prefixes is not None:
            for ids, layers in batch.rows_seen(list(endings), self.prefixes.max_bytes):
                self.prefixes.add(ids, layers)
        for row, reason in endings.items():
            self._finish(batch.jobs[row], reason)
        return batch.without(list(endings))

    def _finish(self, job: Job, reason: str, error: str = "") -> None:
        """Send ``job``'s last text and its Finished event, and free its row. Only the first call counts."""
        if job.finished:
            return
        job.finished = True
        if job.detokenizer is not None:
            tail = job.detokenizer.flush()
            if tail:
                job.deliver(Chunk(tail, len(job.tokens)))
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
            self._release_slot(job)

    def _release_slot(self, job: Job) -> None:
        with self._cond:
            self._slots -= 1
            self._foreground -= not job.background
            if self._closed:
                return
            if self._waiting:
                self._reserve(self._waiting.popleft())
                self._renumber_waiting()
            while self._background and self._idle():
                self._reserve(self._background.popleft())

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
        """End everything still held once the engine is closed: running, prefilling and queued jobs."""
        left = list(self._batch.jobs) if self._batch is not None else []
        self._batch = None
        left += [job for item in self._prefilling for job in item.jobs]
        self._prefilling.clear()
        with self._cond:
            left += list(self._admitted) + list(self._waiting) + list(self._background)
            self._admitted.clear()
            self._waiting.clear()
            self._background.clear()
        for job in left:
            self._finish(job, "cancelled")


def _close_at_exit(scheduler: weakref.ref[Scheduler]) -> Callable[[], None]:
    def close() -> None:
        alive = scheduler()
        if alive is not None:
            alive.close()

    return close
