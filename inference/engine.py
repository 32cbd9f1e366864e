"""The engine: the one object the rest of Chatsite talks to about the model.

:class:`Engine` (``base.py``) lists what an engine must implement;
:class:`TransformersEngine` is the local implementation: a transformers model
served by the continuous-batching scheduler of ``batching.py``.

Typical use::

    engine = load_engine(EngineConfig())
    async for event in engine.stream(Request(messages=[{"role": "user", "content": "Hi"}])):
        ...  # Queued*, Started, Chunk*, Finished
    engine.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from .base import Engine, EngineInfo
from .batching import Scheduler
from .config import EngineConfig
from .errors import InvalidParams
from .loading import context_length, input_device, load_model, parameter_count, prepare_for_inference
from .params import GenerationParams
from .prompts import Prompt, check_messages, fit_prompt, render, with_system
from .quant import quantize, resolve_quant
from .rows import Job
from .stats import EngineStats
from .streaming import Chunk, Event, Finished, Queued, Request, Result, Started
from .threads import one_thread

logger = logging.getLogger(__name__)

__all__ = [
    "Chunk",
    "Engine",
    "EngineInfo",
    "EngineStats",
    "Finished",
    "Queued",
    "Request",
    "Result",
    "Started",
    "TransformersEngine",
    "build_engine",
    "load_engine",
]

# How often a waiting reader checks that the scheduler is still alive.
POLL_SECONDS = 1.0


class TransformersEngine(Engine):
    """A local transformers model behind a continuous-batching scheduler thread."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        config: EngineConfig,
        *,
        model_name: str | None = None,
        load_seconds: float = 0.0,
        quant: str = "none",
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        device = input_device(model)
        self.info = EngineInfo(
            model_name=model_name or config.model,
            device=str(device),
            dtype=str(model.dtype).removeprefix("torch."),
            parameters=parameter_count(model),
            load_seconds=round(load_seconds, 2),
            context_length=context_length(model),
            quant=quant,
        )
        self.stats = EngineStats()
        self.eos_token_ids = _eos_token_ids(model, tokenizer)
        # Fast tokenizers are not safe to encode from several threads at once
        # ("Already borrowed"); prompts are built under this lock.
        self._tokenizer_lock = threading.Lock()
        self._mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()
        self._mailboxes_lock = threading.Lock()
        self._device = device
        # Public for tests and tools (stats, paused()); callers use the methods below.
        self.scheduler = Scheduler(
            model,
            tokenizer,
            max_batch_size=config.max_batch_size,
            max_queue=config.max_queue,
            eos_token_ids=self.eos_token_ids,
            device=device,
            stats=self.stats,
            num_threads=config.num_threads,
            lean_decode=config.lean_decode,
        )

    # -- streaming ------------------------------------------------------------

    async def stream(self, request: Request) -> AsyncIterator[Event]:
        """See Engine.stream."""
        _check_request(request)
        self.scheduler.check_room(request.background)
        loop = asyncio.get_running_loop()
        # Rendering and trimming a long history takes a few tokenizer passes: off the loop.
        prompt = await loop.run_in_executor(None, self.prepare, request)
        queue: asyncio.Queue[Event] = asyncio.Queue()
        job = Job(request=request, prompt=prompt, deliver=_threadsafe_put(self._mailbox(loop), queue, request.cancel))
        self.scheduler.submit(job)
        finished = False
        try:
            async with contextlib.aclosing(self._events(queue, job)) as events:
                async for event in events:
                    finished = isinstance(event, Finished)
                    yield event
        finally:
            if not finished:
                # The reader went away (task cancelled, aclose(), break): free the row.
                request.cancel.set()
                self.scheduler.wake()

    def _mailbox(self, loop: asyncio.AbstractEventLoop) -> _Mailbox:
        with self._mailboxes_lock:
            mailbox = self._mailboxes.get(loop)
            if mailbox is None:
                mailbox = self._mailboxes[loop] = _Mailbox(loop)
            return mailbox

    async def _events(self, queue: asyncio.Queue[Event], job: Job) -> AsyncGenerator[Event, None]:
        """The job's events, consecutive Chunks already queued merged into one."""
        text_so_far: list[str] = []
        held: Event | None = None
        while True:
            event = held if held is not None else await self._next_event(queue, job, text_so_far)
            held = None
            if isinstance(event, Chunk):
                parts, generated = [event.text], event.generated
                while not queue.empty():
                    following = queue.get_nowait()
                    if not isinstance(following, Chunk):
                        held = following
                        break
                    parts.append(following.text)
                    generated = following.generated
                event = Chunk("".join(parts), generated) if len(parts) > 1 else event
                text_so_far.append(event.text)
            yield event
            if isinstance(event, Finished):
                return

    async def _next_event(self, queue: asyncio.Queue[Event], job: Job, text_so_far: list[str]) -> Event:
        """The next event, or a Finished "error" if the scheduler died or stalled."""
        while True:
            try:
                return await asyncio.wait_for(queue.get(), POLL_SECONDS)
            except TimeoutError:
                reason = self.scheduler.stall_reason(self.config.stall_timeout)
                if reason is None:
                    continue
                logger.error("request %d abandoned: %s", job.id, reason)
                job.request.cancel.set()
                result = job.result("error", reason)
                result.text = "".join(text_so_far)
                return Finished(result)

    # -- batch ------------------------------------------------------------------

    def generate_batch(self, requests: list[Request]) -> list[Result]:
        """Generate all ``requests`` on the scheduler, beside any streamed replies; results in input order.

        Blocks until all are done (call it from a worker thread, never from the
        event loop). The jobs enter the queue together, whatever its length,
        and as many as there are free rows start in the same step. Raises
        InvalidParams or PromptTooLong (before generating) if any request is
        malformed or cannot fit, EngineClosed after close(). A close() meanwhile
        ends the unfinished ones as "cancelled".
        """
        if not requests:
            return []
        for request in requests:
            _check_request(request)
        prompts = [self.prepare(request) for request in requests]
        collector = _ResultCollector(len(requests))
        jobs = [
            Job(request=request, prompt=prompt, deliver=collector.deliver_for(index))
            for index, (request, prompt) in enumerate(zip(requests, prompts, strict=True))
        ]
        self.stats.generate_calls += 1
        self.scheduler.submit_all(jobs)
        while not collector.done.wait(POLL_SECONDS):
            reason = self.scheduler.stall_reason(self.config.stall_timeout)
            if reason is not None:
                logger.error("batch of %d abandoned: %s", len(jobs), reason)
                for job in jobs:
                    job.request.cancel.set()
                    collector.record(jobs.index(job), job.result("error", reason))
        results = collector.results()
        logger.info(
            "generated a batch of %d: %d completion tokens",
            len(results),
            sum(r.completion_tokens for r in results),
        )
        return results

    # -- prompts -----------------------------------------------------------------

    def prepare(self, request: Request) -> Prompt:
        """The request's prompt ids, trimmed to fit the context with room for the reply.

        Raises InvalidParams for malformed messages, PromptTooLong when the
        system prompt and the newest user turn alone do not fit.
        """
        messages = with_system(check_messages(request.messages), self.config.default_system_prompt)
        with self._tokenizer_lock:
            return fit_prompt(
                self.tokenizer, messages, request.params.max_new_tokens, self.info.context_length, request.prefill
            )

    def count_tokens(self, messages: list[dict], prefill: str = "") -> int:
        """The untrimmed prompt length of ``messages`` (default system prompt included; ``prefill`` as in
        render())."""
        checked = with_system(check_messages(messages), self.config.default_system_prompt)
        with self._tokenizer_lock:
            return len(render(self.tokenizer, checked, prefill))

    def fits(self, messages: list[dict], max_new_tokens: int, prefill: str = "") -> bool:
        """See Engine.fits: the prompt as prepare() renders it, before any trimming."""
        return self.count_tokens(messages, prefill) + max_new_tokens <= self.info.context_length

    def close(self, timeout: float = 30.0) -> None:
        """Stop accepting, end queued and running requests as "cancelled", and join the scheduler thread.

        Every request gets exactly one Finished. Waits up to ``timeout``
        seconds (a step in progress completes first); safe to call twice.
        """
        self.scheduler.close(timeout)


def _check_request(request: Request) -> None:
    if not isinstance(request.params, GenerationParams):
        raise InvalidParams("params must be GenerationParams (use GenerationParams.from_dict)")


def _threadsafe_put(mailbox: _Mailbox, queue: asyncio.Queue[Event], cancel: threading.Event) -> Callable[[Event], None]:
    """A deliver callback for the scheduler thread that puts events on ``queue`` through ``mailbox``."""

    def deliver(event: Event) -> None:
        if not mailbox.put(queue, event):
            # The event loop is closed: nobody will read this reply, so stop making it.
            cancel.set()

    return deliver


class _Mailbox:
    """Events from the scheduler thread for one event loop, handed over a batch per loop callback.

    A decoding step delivers a token to every row. One ``call_soon_threadsafe``
    per row would wake the loop (a write to its self-pipe) and take the GIL
    from the scheduler thread once per row; here the first event of a step
    schedules the hand-over and the others join it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue[Event], Event]] = []

    def put(self, queue: asyncio.Queue[Event], event: Event) -> bool:
        """Queue ``event`` for ``queue``; False if the loop is closed."""
        with self._lock:
            if self.loop.is_closed():
                # A hand-over scheduled before the loop closed never runs.
                self._pending.clear()
                return False
            self._pending.append((queue, event))
            if len(self._pending) > 1:
                return True  # a hand-over is already scheduled
        try:
            self.loop.call_soon_threadsafe(self._hand_over)
        except RuntimeError:
            with self._lock:
                self._pending.clear()
            return False
        return True

    def _hand_over(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, []
        for queue, event in pending:
            queue.put_nowait(event)


class _ResultCollector:
    """Gathers the Finished results of generate_batch's jobs (delivered on the scheduler thread)."""

    def __init__(self, count: int) -> None:
        self._results: list[Result | None] = [None] * count
        self._lock = threading.Lock()
        self.done = threading.Event()

    def deliver_for(self, index: int) -> Callable[[Event], None]:
        def deliver(event: Event) -> None:
            # Queued, Started and Chunk events are of no use here: the Result carries the text.
            if isinstance(event, Finished):
                self.record(index, event.result)

        return deliver

    def record(self, index: int, result: Result) -> None:
        """Record ``result`` for job ``index`` unless it already has one."""
        with self._lock:
            if self._results[index] is None:
                self._results[index] = result
            if all(result is not None for result in self._results):
                self.done.set()

    def results(self) -> list[Result]:
        with self._lock:
            return [result for result in self._results if result is not None]


def _eos_token_ids(model: Any, tokenizer: Any) -> set[int]:
    """Every token that ends a reply: the generation config's and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(int(token) for token in configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


# -- construction -------------------------------------------------------------------


def build_engine(
    model: Any,
    tokenizer: Any,
    config: EngineConfig | None = None,
    *,
    model_name: str | None = None,
    load_seconds: float = 0.0,
    quant: str | None = None,
) -> TransformersEngine:
    """An engine around an already-built ``model`` and ``tokenizer`` (tests use a tiny one).

    Puts the model in eval mode, gives the tokenizer a pad token, and starts
    the scheduler thread. ``quant`` says how ``model`` was already quantized;
    None quantizes it here as ``config.quant`` says (``auto`` means none for
    a model built in memory). Raises InvalidConfig for a quant the device lacks.
    """
    config = config if config is not None else EngineConfig()
    if quant is None:
        quant = resolve_quant(config.quant, input_device(model), from_low_bit_gguf=False)
        if quant != "none":
            quantize(model, quant)
    prepare_for_inference(model, tokenizer)
    return TransformersEngine(model, tokenizer, config, model_name=model_name, load_seconds=load_seconds, quant=quant)


def load_engine(config: EngineConfig) -> TransformersEngine:
    """Load the configured model and tokenizer once and serve them.

    Logs one line: model, parameters, device, dtype, load time. Raises
    InvalidConfig or ModelLoadError (see loading.load_model).
    """
    # Only the scheduler thread may make an OpenMP team (threads.py); it starts once this has returned.
    with one_thread():
        loaded = load_model(config)
    engine = build_engine(
        loaded.model,
        loaded.tokenizer,
        config,
        model_name=loaded.name,
        load_seconds=loaded.load_seconds,
        quant=loaded.quant,
    )
    info = engine.info
    logger.info(
        "loaded model %s: %.1fM parameters on %s (%s, quant %s) in %.1fs, context %d tokens",
        info.model_name,
        info.parameters / 1e6,
        info.device,
        info.dtype,
        info.quant,
        info.load_seconds,
        info.context_length,
    )
    return engine
