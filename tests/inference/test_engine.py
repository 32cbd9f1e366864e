"""The engine on the tiny model: streaming, batching, queueing, cancelling, generate_batch.

Greedy decoding on the tiny model is deterministic, so "the same request run
alone" is an exact oracle for what a batched row must produce.
"""

import asyncio
import io
import subprocess
import sys
import threading

import pytest
import torch
from transformers import TopPLogitsWarper

from inference import (
    Chunk,
    EngineClosed,
    Finished,
    GenerationParams,
    InvalidParams,
    PromptTooLong,
    Queued,
    QueueFull,
    Request,
    Started,
)
from inference.__main__ import main as cli_main
from inference.rows import Job
from inference.sampling import Sampler
from inference.streaming import IncrementalDetokenizer
from tests.inference_fixtures import REPO_ROOT

LONG = 300  # tokens: a reply that is surely still running while the test acts


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy(max_new_tokens: int, **fields) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=max_new_tokens, **fields)


async def run(engine, request):
    """All events of one stream: (events, result)."""
    events = [event async for event in engine.stream(request)]
    return events, events[-1].result


def text_of(events) -> str:
    return "".join(event.text for event in events if isinstance(event, Chunk))


async def solo_text(engine, messages, params) -> str:
    _, result = await run(engine, Request(messages=messages, params=params))
    return result.text


async def until_chunk(stream):
    """Advance ``stream`` to its first Chunk; returns the events read."""
    events = []
    while not events or not isinstance(events[-1], Chunk):
        events.append(await anext(stream))
    return events


async def rest(stream) -> list:
    return [event async for event in stream]


class Collector:
    """A deliver callback for Jobs submitted straight to the scheduler (its thread calls it)."""

    def __init__(self, on_chunk=None):
        self.events, self.done, self.on_chunk = [], threading.Event(), on_chunk

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, Chunk) and self.on_chunk:
            self.on_chunk()
        if isinstance(event, Finished):
            self.done.set()

    @property
    def result(self):
        assert self.done.wait(60), "the job never finished"
        return self.events[-1].result


# -- streaming -------------------------------------------------------------------


@pytest.mark.asyncio
async def test_it_streams_started_chunks_then_one_finished(tiny_engine):
    messages = user("Hello there")
    events, result = await run(tiny_engine, Request(messages=messages, params=greedy(20)))

    assert events[0] == Started(prompt_tokens=tiny_engine.count_tokens(messages), dropped_turns=0)
    assert [type(e) for e in events[1:-1]] == [Chunk] * (len(events) - 2)
    assert isinstance(events[-1], Finished)
    assert text_of(events) == result.text != ""
    assert result.finish_reason == "length"
    assert result.prompt_tokens == tiny_engine.count_tokens(messages)
    assert result.completion_tokens == 20
    assert result.ttft_ms >= 0 and result.duration_ms >= result.ttft_ms and result.tokens_per_s > 0
    assert result.error == ""


@pytest.mark.asyncio
async def test_greedy_streaming_matches_transformers_generate(tiny_engine, tiny_model):
    model, tokenizer = tiny_model
    # This prompt's reply contains byte tokens of incomplete characters, which
    # the detokenizer must hold back and still end up equal to a full decode.
    request = Request(messages=user("Tell me a story"), params=greedy(60))
    prompt = tiny_engine.prepare(request).ids
    with torch.inference_mode():
        ids = torch.tensor([prompt])
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            do_sample=False,
            max_new_tokens=60,
            repetition_penalty=request.params.repetition_penalty,
        )
    generated = output[0, len(prompt) :].tolist()
    assert any("\ufffd" in tokenizer.decode([token]) for token in generated)

    events, result = await run(tiny_engine, request)

    assert text_of(events) == result.text == tokenizer.decode(generated, skip_special_tokens=True)
    assert result.completion_tokens == len(generated)


@pytest.mark.asyncio
async def test_sampled_streaming_joins_to_the_final_text(tiny_engine):
    params = GenerationParams(temperature=1.5, top_p=0.95, max_new_tokens=80, repetition_penalty=1.3)
    events, result = await run(tiny_engine, Request(messages=user("Improvise"), params=params))
    assert text_of(events) == result.text
    assert result.completion_tokens == 80 or result.finish_reason == "stop"


def test_the_detokenizer_never_splits_a_character(tiny_model):
    tokenizer = tiny_model[1]
    text = "Héllo wörld 🙂 naïve 世界你好 👨‍👩‍👧 ½ — done."
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode([token]) for token in ids), "the text must have split characters"

    detokenizer = IncrementalDetokenizer(tokenizer)
    pieces = [detokenizer.push(token) for token in ids] + [detokenizer.flush()]

    assert "".join(pieces) == detokenizer.text == text
    assert not any("\ufffd" in piece for piece in pieces)
    assert pieces.count("") > 0, "partial characters were held back"


def test_the_detokenizer_flushes_an_unfinished_character(tiny_model):
    tokenizer = tiny_model[1]
    ids = tokenizer.encode("ok 🙂", add_special_tokens=False)[:-1]
    detokenizer = IncrementalDetokenizer(tokenizer)
    streamed = "".join(detokenizer.push(token) for token in ids)
    assert "\ufffd" not in streamed
    assert streamed + detokenizer.flush() == tokenizer.decode(ids)


def test_the_detokenizer_keeps_a_leading_space_after_the_prompt(tiny_model):
    tokenizer = tiny_model[1]
    prompt = tokenizer.encode("Say", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, prompt)
    assert (
        "".join(detokenizer.push(t) for t in tokenizer.encode(" hello world", add_special_tokens=False))
        == " hello world"
    )


@pytest.mark.asyncio
async def test_trimmed_turns_are_reported(tiny_engine):
    history = []
    for number in range(30):
        history += [
            {"role": "user", "content": f"question {number} " + "blah " * 30},
            {"role": "assistant", "content": f"answer {number} " + "yada " * 30},
        ]
    messages = [*history, {"role": "user", "content": "newest"}]
    events, result = await run(tiny_engine, Request(messages=messages, params=greedy(100)))

    started = events[0]
    assert started.dropped_turns > 0 and started.dropped_turns % 2 == 0
    assert result.dropped_turns == started.dropped_turns
    assert started.prompt_tokens + 100 <= tiny_engine.info.context_length
    assert result.completion_tokens == 100


@pytest.mark.asyncio
async def test_bad_requests_fail_before_anything_starts(tiny_engine):
    with pytest.raises(PromptTooLong):
        await anext(tiny_engine.stream(Request(messages=user("word " * 2000), params=greedy(5))))
    with pytest.raises(InvalidParams, match="last message"):
        await anext(tiny_engine.stream(Request(messages=[{"role": "assistant", "content": "hi"}])))
    with pytest.raises(InvalidParams, match="params"):
        await anext(tiny_engine.stream(Request(messages=user("hi"), params={"temperature": 0})))


# -- cancelling ----------------------------------------------------------------------


def test_cancel_stops_the_row_within_one_decoding_step(tiny_engine):
    request = Request(messages=user("Hello there"), params=greedy(LONG))
    cancelled_at = []

    def cancel_after_five_tokens():
        # Runs on the scheduler thread, in the middle of a step.
        if len(job.tokens) >= 5 and not cancelled_at:
            cancelled_at.append(len(job.tokens))
            request.cancel.set()

    collector = Collector(on_chunk=cancel_after_five_tokens)
    job = Job(request=request, prompt=tiny_engine.prepare(request), deliver=collector)
    tiny_engine.scheduler.submit(job)
    result = collector.result

    assert result.finish_reason == "cancelled"
    assert result.completion_tokens == cancelled_at[0], "no token was generated after the cancel"
    assert result.text == text_of(collector.events)


@pytest.mark.asyncio
async def test_a_cancelled_stream_keeps_its_text_so_far(tiny_engine):
    request = Request(messages=user("Hello there"), params=greedy(LONG))
    stream = tiny_engine.stream(request)
    events = await until_chunk(stream)
    request.cancel.set()
    events += await rest(stream)

    result = events[-1].result
    assert result.finish_reason == "cancelled"
    assert 0 < result.completion_tokens < LONG
    assert result.text == text_of(events) != ""
    full = await solo_text(tiny_engine, request.messages, request.params)
    assert full.startswith(result.text)


@pytest.mark.asyncio
async def test_closing_the_stream_cancels_the_request(make_engine):
    engine = make_engine(max_batch_size=1, max_queue=1)
    first = Request(messages=user("Hello there"), params=greedy(LONG))
    stream = engine.stream(first)
    await until_chunk(stream)
    await stream.aclose()
    assert first.cancel.is_set()

    # The only row is free again: the next request runs to its end.
    _, result = await run(engine, Request(messages=user("Next"), params=greedy(5)))
    assert result.finish_reason == "length"
    assert engine.stats.cancelled == 1


@pytest.mark.asyncio
async def test_cancelling_the_consuming_task_cancels_the_request(tiny_engine):
    request = Request(messages=user("Hello there"), params=greedy(LONG))
    streaming = asyncio.Event()

    async def consume():
        async for event in tiny_engine.stream(request):
            if isinstance(event, Chunk):
                streaming.set()

    task = asyncio.create_task(consume())
    await streaming.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert request.cancel.is_set()


# -- batching ----------------------------------------------------------------------


def test_requests_submitted_together_share_one_batch(make_engine):
    engine = make_engine()
    short = Request(messages=user("Hi"), params=greedy(40))
    longer = Request(messages=user("Please write a long and detailed answer about the sea"), params=greedy(25))
    alone = [asyncio.run(solo_text(engine, r.messages, r.params)) for r in (short, longer)]
    steps_alone, passes_alone = engine.stats.decode_steps, engine.stats.prefill_passes

    collectors = [Collector(), Collector()]
    with engine.scheduler.paused():
        for request, collector in zip((short, longer), collectors, strict=True):
            engine.scheduler.submit(Job(request=request, prompt=engine.prepare(request), deliver=collector))
    results = [collector.result for collector in collectors]

    assert [r.text for r in results] == alone
    # Read in one padded forward pass, decoded as one batch from the start.
    assert engine.stats.prefill_passes - passes_alone == 1
    assert engine.stats.max_rows == 2 and engine.stats.joins == 0
    # Decoded together: the longer reply's 39 steps carried the other row for 24 of them.
    assert engine.stats.decode_steps - steps_alone == 39


@pytest.mark.asyncio
async def test_a_request_joins_a_running_batch(make_engine):
    engine = make_engine()
    running = Request(messages=user("Hi"), params=greedy(LONG))
    joining = Request(
        messages=user("A much longer prompt, so the running row gets left-padded " * 3),
        params=GenerationParams(temperature=0, max_new_tokens=30, repetition_penalty=1.2),
    )
    alone = [await solo_text(engine, r.messages, r.params) for r in (running, joining)]

    stream = engine.stream(running)
    events = await until_chunk(stream)
    joined_events, joined = await run(engine, joining)
    events += await rest(stream)

    assert engine.stats.joins == 1 and engine.stats.max_rows == 2
    assert joined.text == text_of(joined_events) == alone[1]
    assert events[-1].result.text == text_of(events) == alone[0]


def test_a_long_prompt_is_read_in_chunks_while_others_keep_decoding(make_engine):
    from inference.batching import PREFILL_CHUNK

    engine = make_engine()
    running = Request(messages=user("Hi"), params=greedy(LONG))
    long_prompt = Request(messages=user("many words " * 400), params=greedy(10))
    assert len(engine.prepare(long_prompt).ids) > PREFILL_CHUNK
    alone = asyncio.run(solo_text(engine, long_prompt.messages, long_prompt.params))
    # Forget the prompt just read, or the second reading would start from its stored prefix (prefix.py).
    engine.scheduler.prefixes.clear()

    log = []  # (name, event) in the scheduler's own order

    def logger_for(name):
        collector = Collector()

        def deliver(event):
            log.append((name, event))
            collector(event)

        return collector, deliver

    running_collector, running_deliver = logger_for("running")
    joining_collector, joining_deliver = logger_for("joining")
    joined = []

    def submit_the_long_prompt_once():
        # On the scheduler thread, at the running row's first token.
        if not joined:
            joined.append(True)
            engine.scheduler.submit(
                Job(request=long_prompt, prompt=engine.prepare(long_prompt), deliver=joining_deliver)
            )

    running_collector.on_chunk = submit_the_long_prompt_once
    engine.scheduler.submit(Job(request=running, prompt=engine.prepare(running), deliver=running_deliver))
    assert joining_collector.result.text == alone
    running.cancel.set()
    assert running_collector.result.finish_reason == "cancelled"

    names = [name for name, event in log]
    started = names.index("joining")
    first_text = next(i for i, (name, event) in enumerate(log) if name == "joining" and isinstance(event, Chunk))
    assert "running" in names[started:first_text], "the running row decoded while the long prompt was read"


@pytest.mark.asyncio
async def test_mixed_settings_in_one_batch_keep_greedy_rows_exact(tiny_engine):
    plain = Request(messages=user("Hello there"), params=greedy(30))
    alone = await solo_text(tiny_engine, plain.messages, plain.params)
    sampled = Request(
        messages=user("Hello there"), params=GenerationParams(temperature=2, top_p=1.0, max_new_tokens=30)
    )
    (greedy_events, greedy_result), _ = await asyncio.gather(run(tiny_engine, plain), run(tiny_engine, sampled))
    assert greedy_result.text == alone


# -- queueing -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_full_queue_refuses_at_once(make_engine):
    engine = make_engine(max_batch_size=1, max_queue=1)
    running = Request(messages=user("Hello there"), params=greedy(LONG))
    first = engine.stream(running)
    assert isinstance(await anext(first), Started)
    waiting = engine.stream(Request(messages=user("Second"), params=greedy(5)))
    assert await anext(waiting) == Queued(position=1)

    with pytest.raises(QueueFull):
        await anext(engine.stream(Request(messages=user("Third"), params=greedy(5))))

    running.cancel.set()
    assert (await rest(first))[-1].result.finish_reason == "cancelled"
    events = await rest(waiting)
    assert isinstance(events[0], Started) and events[-1].result.finish_reason == "length"


@pytest.mark.asyncio
async def test_waiting_requests_hear_their_place_whenever_it_changes(make_engine):
    engine = make_engine(max_batch_size=1, max_queue=3)
    requests = [Request(messages=user(f"Request {n}"), params=greedy(LONG if n < 2 else 5)) for n in range(4)]
    a, b, c, d = streams = [engine.stream(r) for r in requests]
    assert isinstance(await anext(a), Started)
    assert [await anext(s) for s in (b, c, d)] == [Queued(1), Queued(2), Queued(3)]

    requests[2].cancel.set()  # c gives up while waiting
    c_events = await rest(c)
    assert len(c_events) == 1 and c_events[0].result.finish_reason == "cancelled" and c_events[0].result.text == ""
    assert await anext(d) == Queued(2)

    requests[0].cancel.set()  # a stops: b gets the row
    assert await anext(b) == Started(prompt_tokens=len(engine.prepare(requests[1]).ids), dropped_turns=0)
    assert await anext(d) == Queued(1)

    requests[1].cancel.set()
    assert isinstance(await anext(d), Started)
    assert (await rest(d))[-1].result.finish_reason == "length"
    for stream in streams:
        await stream.aclose()


@pytest.mark.asyncio
async def test_background_work_runs_only_while_no_request_does_and_gives_way_to_one(make_engine):
    engine = make_engine(max_batch_size=2, max_queue=2)
    a = Request(messages=user("A reply someone reads"), params=greedy(LONG))
    title = Request(messages=user("A title nobody waits for"), params=greedy(LONG), background=True)
    first = engine.stream(a)
    assert isinstance(await anext(first), Started)
    background = engine.stream(title)
    # A row is free, but a reply runs: the background work waits, so the next reply gets the row at once.
    b = Request(messages=user("Another reply"), params=greedy(LONG))
    second = engine.stream(b)
    assert isinstance(await anext(second), Started)
    a.cancel.set()
    b.cancel.set()
    for stream in (first, second):
        assert (await rest(stream))[-1].result.finish_reason == "cancelled"
    # Nothing else runs: the background work starts.
    assert isinstance(await anext(background), Started)
    assert isinstance(await anext(background), Chunk)
    # A reply comes: the background work is cancelled, so it neither delays nor slows the reply.
    third = engine.stream(Request(messages=user("A third reply"), params=greedy(5)))
    assert isinstance(await anext(third), Started)
    ended = (await rest(background))[-1].result
    assert ended.finish_reason == "cancelled" and title.cancel.is_set()
    assert (await rest(third))[-1].result.finish_reason == "length"
    for stream in (first, second, background, third):
        await stream.aclose()


# -- failures -----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_a_stuck_scheduler_ends_the_stream_as_an_error(make_engine):
    engine = make_engine(stall_timeout=0.2)
    release = threading.Event()

    def hold_the_model(module, args):
        if engine.scheduler.busy_since is not None:  # a step's forward pass (the warm-up's runs outside steps)
            release.wait(30)  # hangs, as a stuck kernel or a deadlocked device would

    hook = engine.model.register_forward_pre_hook(hold_the_model)
    try:
        events, result = await run(engine, Request(messages=user("Hello"), params=greedy(5)))
    finally:
        release.set()
        hook.remove()
    assert result.finish_reason == "error" and "stuck" in result.error
    assert [type(event) for event in events] == [Started, Finished]  # the prompt's pass never ended
    assert events[-1] == Finished(result)


@pytest.mark.asyncio
async def test_closing_the_engine_cancels_running_and_queued_work_once_each(make_engine):
    engine = make_engine(max_batch_size=1, max_queue=4)
    loop = asyncio.get_running_loop()
    running = engine.stream(Request(messages=user("Hello there"), params=greedy(LONG)))
    running_events = await until_chunk(running)
    # Held between steps from here on, so the running reply cannot finish first.
    with engine.scheduler.paused():
        waiting = engine.stream(Request(messages=user("Me next"), params=greedy(LONG)))
        assert await anext(waiting) == Queued(1)
        batch_started = threading.Event()
        original_submit_all = engine.scheduler.submit_all

        def submit_all(jobs):
            original_submit_all(jobs)
            batch_started.set()

        engine.scheduler.submit_all = submit_all
        batch = loop.run_in_executor(
            None, engine.generate_batch, [Request(messages=user(f"Batch {n}"), params=greedy(LONG)) for n in range(2)]
        )
        assert await loop.run_in_executor(None, batch_started.wait, 30)

        await loop.run_in_executor(None, engine.close, 30)

    assert not engine.scheduler.alive
    running_events += await rest(running)
    waiting_events = await rest(waiting)
    for events in (running_events, waiting_events):
        finished = [event for event in events if isinstance(event, Finished)]
        assert len(finished) == 1 and events[-1] is finished[0]
        assert finished[0].result.finish_reason == "cancelled"
    assert running_events[-1].result.text == text_of(running_events) != ""
    assert waiting_events[-1].result.completion_tokens == 0
    assert [result.finish_reason for result in await batch] == ["cancelled", "cancelled"]
    assert engine.stats.cancelled == 4 and engine.stats.finished == engine.stats.submitted == 4
    with pytest.raises(EngineClosed):
        await anext(engine.stream(Request(messages=user("Hi"), params=greedy(5))))
    with pytest.raises(EngineClosed):
        engine.generate_batch([Request(messages=user("Hi"), params=greedy(5))])
    engine.close()  # a second close is harmless


EXIT_MID_REPLY = """
import sys, threading
from inference import Chunk, GenerationParams, Request, build_engine
from inference.rows import Job
from tests.inference_fixtures import load_tiny, tiny_config

model, tokenizer = load_tiny(sys.argv[1])
engine = build_engine(model, tokenizer, tiny_config(num_threads=2))
speaking = threading.Event()
params = GenerationParams(temperature=0, max_new_tokens=900)
request = Request(messages=[{"role": "user", "content": "Hi"}], params=params)
deliver = lambda event: speaking.set() if isinstance(event, Chunk) else None
engine.scheduler.submit(Job(request=request, prompt=engine.prepare(request), deliver=deliver))
assert speaking.wait(60)
print("exiting mid-reply", flush=True)
sys.exit(0)  # without engine.close(): the interpreter must still exit cleanly
"""


def test_a_process_that_exits_mid_reply_exits_cleanly(tiny_model_dir):
    # The scheduler thread must not be inside torch when the interpreter
    # finalizes, or C++ aborts the process (exit 134, "terminate called ...").
    done = subprocess.run(
        [sys.executable, "-c", EXIT_MID_REPLY, str(tiny_model_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "exiting mid-reply" in done.stdout, done.stderr
    assert "terminate called" not in done.stderr
    assert done.returncode == 0, done.stderr


# -- generate_batch ------------------------------------------------------------------


def test_generate_batch_is_one_call_with_results_in_order(tiny_engine):
    requests = [
        Request(messages=user("Hi"), params=greedy(12)),
        Request(messages=user("A much longer prompt than the others, to make padding matter " * 2), params=greedy(7)),
        Request(messages=user("Medium length prompt here"), params=greedy(20, repetition_penalty=1.3)),
    ]
    alone = [tiny_engine.generate_batch([r])[0] for r in requests]
    streamed = [asyncio.run(solo_text(tiny_engine, r.messages, r.params)) for r in requests]
    calls = tiny_engine.stats.generate_calls

    results = tiny_engine.generate_batch(requests)

    assert tiny_engine.stats.generate_calls == calls + 1
    assert [r.text for r in results] == [r.text for r in alone] == streamed
    assert [r.completion_tokens for r in results] == [12, 7, 20]
    assert [r.finish_reason for r in results] == ["length"] * 3
    assert [r.prompt_tokens for r in results] == [len(tiny_engine.prepare(r).ids) for r in requests]


def test_generate_batch_keeps_greedy_rows_exact_beside_sampled_ones(tiny_engine):
    plain = Request(messages=user("Hello there"), params=greedy(15))
    sampled = Request(messages=user("Improvise"), params=GenerationParams(temperature=1.5, max_new_tokens=25))
    alone = tiny_engine.generate_batch([plain])[0].text
    results = tiny_engine.generate_batch([sampled, plain])
    assert results[1].text == alone
    assert results[0].completion_tokens == 25


def test_generate_batch_refuses_before_generating(tiny_engine):
    calls = tiny_engine.stats.generate_calls
    with pytest.raises(PromptTooLong):
        tiny_engine.generate_batch(
            [Request(messages=user("Hi"), params=greedy(5)), Request(messages=user("word " * 2000), params=greedy(5))]
        )
    assert tiny_engine.stats.generate_calls == calls
    assert tiny_engine.generate_batch([]) == []


def test_generate_batch_honours_a_cancelled_request(tiny_engine):
    cancelled = Request(messages=user("Hi"), params=greedy(50))
    cancelled.cancel.set()
    results = tiny_engine.generate_batch([cancelled, Request(messages=user("Hi"), params=greedy(10))])
    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens < 50
    assert results[1].finish_reason == "length" and results[1].completion_tokens == 10


# -- sampling -----------------------------------------------------------------------


def sampler_for(*params: GenerationParams, history=((0,),)) -> Sampler:
    return Sampler.for_rows(
        list(params), [list(h) for h in history] * (len(params) // len(history)), torch.device("cpu")
    )


def test_the_repetition_penalty_demotes_tokens_already_seen():
    logits = torch.tensor([[0.0, -1.0, 0.0, 1.0, 0.0, 1.02]])
    assert sampler_for(greedy(5, repetition_penalty=1.0), history=[[5]]).choose(logits.clone()).item() == 5
    penalized = sampler_for(greedy(5, repetition_penalty=1.05), history=[[5, 1]])
    assert penalized.choose(logits.clone()).item() == 3
    assert penalized._penalize(logits.clone())[0, 1].item() == pytest.approx(-1.05)


@pytest.mark.parametrize("spread, top_p", [(4.0, 0.8), (0.002, 0.5)])
def test_top_p_samples_only_from_the_nucleus(spread, top_p):
    # A peaked distribution takes the top-256 shortcut; a nearly flat one,
    # whose nucleus is wider than 256 tokens, the full sort.
    torch.manual_seed(0)
    logits = -torch.arange(1000, dtype=torch.float32).unsqueeze(0) * spread / 100
    allowed = set(torch.isfinite(TopPLogitsWarper(top_p)(None, logits.clone())[0]).nonzero().flatten().tolist())
    sampler = sampler_for(GenerationParams(temperature=1.0, top_p=top_p, repetition_penalty=1.0))
    drawn = {sampler.choose(logits.clone()).item() for _ in range(300)}
    assert drawn <= allowed
    assert len(drawn) > 1
    if spread < 1:
        assert max(drawn) > 256, "the flat case must reach beyond the shortcut's candidates"


def test_greedy_rows_stay_greedy_beside_sampled_rows():
    torch.manual_seed(0)
    logits = torch.randn(2, 50)
    sampler = sampler_for(greedy(5, repetition_penalty=1.0), GenerationParams(temperature=2.0, top_p=1.0))
    choices = [sampler.choose(logits.clone()).tolist() for _ in range(50)]
    assert {row[0] for row in choices} == {logits[0].argmax().item()}
    assert len({row[1] for row in choices}) > 1


# -- the CLI --------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_the_cli_streams_a_reply(tiny_engine, tiny_model_dir):
    out = io.StringIO()
    argv = [
        "Hello there",
        "--model",
        str(tiny_model_dir),
        "--temperature",
        "0",
        "--max-new-tokens",
        "8",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    status = await asyncio.get_running_loop().run_in_executor(None, lambda: cli_main(argv, {}, out))
    assert status == 0
    expected = await solo_text(tiny_engine, user("Hello there"), greedy(8))
    assert out.getvalue() == expected + "\n"


def test_the_cli_names_a_bad_setting(capsys):
    assert cli_main(["Hi"], {"CHAT_DEVICE": "tpu"}, io.StringIO()) == 2
    assert "device 'tpu' is not one of auto, cuda, mps, cpu" in capsys.readouterr().err
