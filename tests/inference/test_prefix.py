"""Stored prompt prefixes (inference/prefix.py): what is kept and found, and replies that stay exact.

The oracle for the engine tests is the same request read from scratch, with
the store emptied: greedy decoding on the tiny model is deterministic.
"""

import asyncio

import torch

from inference import Request
from inference.prefix import MIN_TOKENS, PrefixStore
from inference.rows import Job
from tests.inference.test_engine import Collector, greedy, run, solo_text, user


def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One layer's keys and values for ``tokens`` tokens (1 head of 4): 32 bytes a token."""
    return [(torch.zeros(1, 1, tokens, 4), torch.zeros(1, 1, tokens, 4))]


def test_the_longest_stored_prefix_is_found_leaving_one_token_to_read():
    store = PrefixStore(max_bytes=10_000)
    first, second = list(range(1, 11)), [1, 2, 3, 4, 5, 6, 20, 21]
    store.add(first, states(len(first)))
    store.add(second, states(len(second)))

    assert store.find(first + [11])[1] == 10
    assert store.find(first)[1] == 9  # the last token is read again: its logits give the first reply token
    found, shared = store.find(second + [22])
    assert (found.ids, shared) == (tuple(second), 8)
    assert store.find([1, 2, 3]) is None  # under MIN_TOKENS shared
    assert store.find([9] * 20) is None
    assert (store.hits, store.tokens_saved) == (3, 27)


def test_a_prompt_that_extends_a_stored_one_takes_its_place():
    store = PrefixStore(max_bytes=10_000)
    turn = list(range(1, 9))
    store.add(turn, states(len(turn)))
    store.add(turn + [50, 51, 52], states(len(turn) + 3))
    assert len(store) == 1 and store.bytes == 32 * 11
    assert store.find(turn + [50, 51, 52, 53])[1] == 11


def test_the_least_recently_used_prefix_goes_first_when_the_store_is_full():
    store = PrefixStore(max_bytes=32 * 25)  # room for two prompts of 10 tokens, not three
    a, b, c = ([start] * MIN_TOKENS + list(range(6)) for start in (100, 200, 300))
    store.add(a, states(10))
    store.add(b, states(10))
    assert store.find(a + [7]) is not None  # a is now the most recently used
    store.add(c, states(10))

    assert store.find(b + [7]) is None
    assert store.find(a + [7]) is not None and store.find(c + [7]) is not None
    assert store.bytes == 32 * 20
    store.add(list(range(100)), states(100))  # larger than the whole store: not kept, nothing evicted
    assert len(store) == 2


def test_a_repeated_prompt_reads_only_its_last_token_and_replies_the_same(make_engine):
    engine = make_engine()
    request = Request(messages=user("Tell me about the sea"), params=greedy(30))
    first = asyncio.run(solo_text(engine, request.messages, request.params))
    again = asyncio.run(solo_text(engine, request.messages, request.params))

    prefixes = engine.scheduler.prefixes
    assert again == first
    assert (prefixes.hits, prefixes.tokens_saved) == (1, len(engine.prepare(request).ids) - 1)


def test_a_finished_reply_is_kept_with_its_prompt(make_engine):
    engine = make_engine()
    request = Request(messages=user("Tell me about lighthouses"), params=greedy(20))
    _, result = asyncio.run(run(engine, request))
    prompt = engine.prepare(request).ids

    # The prompt's own entry gave way to the prompt and reply, which extend it.
    [kept] = engine.scheduler.prefixes.stored()
    # Every token whose keys and values were computed: the last one drawn never was.
    assert len(kept.ids) == len(prompt) + result.completion_tokens - 1
    assert list(kept.ids[: len(prompt)]) == prompt
    assert all(keys.shape[2] == len(kept.ids) for keys, _ in kept.layers)
    assert result.text.startswith(engine.tokenizer.decode(kept.ids[len(prompt) :]))


def test_the_next_turn_of_a_conversation_reads_only_what_is_new(make_engine):
    engine = make_engine()
    opening = user("Tell me about lighthouses")
    reply = asyncio.run(solo_text(engine, opening, greedy(20)))
    follow_up = [*opening, {"role": "assistant", "content": reply}, *user("And the keepers?")]
    params = greedy(25)
    [kept] = engine.scheduler.prefixes.stored()

    from_prefix = asyncio.run(solo_text(engine, follow_up, params))
    saved = engine.scheduler.prefixes.tokens_saved
    engine.scheduler.prefixes.clear()
    from_scratch = asyncio.run(solo_text(engine, follow_up, params))

    assert from_prefix == from_scratch
    # Everything the follow-up shares with the first prompt and reply was reused.
    ids = engine.prepare(Request(messages=follow_up, params=params)).ids
    shared = 0
    while shared < len(kept.ids) and kept.ids[shared] == ids[shared]:
        shared += 1
    assert saved == shared > len(engine.prepare(Request(messages=opening, params=greedy(20))).ids)


def test_a_stopped_reply_is_kept_too(make_engine):
    engine = make_engine()
    request = Request(messages=user("Tell me about the sea"), params=greedy(200))

    def stop_after_five_tokens():
        if len(job.tokens) >= 5:
            request.cancel.set()

    job = Job(request=request, prompt=engine.prepare(request), deliver=Collector(on_chunk=stop_after_five_tokens))
    engine.scheduler.submit(job)
    result = job.deliver.result

    [kept] = engine.scheduler.prefixes.stored()
    assert result.finish_reason == "cancelled"
    assert len(kept.ids) == result.prompt_tokens + result.completion_tokens - 1 > result.prompt_tokens


def test_a_conversation_too_long_for_the_store_keeps_its_first_part(make_engine, monkeypatch):
    engine = make_engine()
    prefixes = engine.scheduler.prefixes
    request = Request(messages=user("Tell me about the sea"), params=greedy(5))
    prompt = engine.prepare(request).ids
    first = asyncio.run(solo_text(engine, request.messages, request.params))
    [whole] = prefixes.stored()
    per_token = whole.nbytes // len(whole.ids)

    prefixes.clear()
    prefixes.max_bytes = 10 * per_token  # room for 10 tokens, fewer than the prompt's
    assert len(prompt) > 10
    added = []
    monkeypatch.setattr(prefixes, "add", lambda ids, layers, add=prefixes.add: (added.append(ids), add(ids, layers)))
    again = asyncio.run(solo_text(engine, request.messages, request.params))
    [part] = prefixes.stored()
    assert list(part.ids) == prompt[:10] and part.nbytes == 10 * per_token
    # Stored as the prompt was read; the reply's end had nothing to add, so nothing was copied again.
    assert added == [prompt[:10]]
    once_more = asyncio.run(solo_text(engine, request.messages, request.params))
    assert (prefixes.hits, prefixes.tokens_saved) == (1, 10)
    assert first == again == once_more

    prefixes.clear()
    prefixes.max_bytes = 1  # not one token fits
    asyncio.run(solo_text(engine, request.messages, request.params))
    assert len(prefixes) == 0


def test_rows_with_different_stored_prefixes_are_read_in_one_pass_and_stay_exact(make_engine):
    engine = make_engine(max_batch_size=4)
    opening = user("Tell me about lighthouses")
    reply = asyncio.run(solo_text(engine, opening, greedy(12)))
    seen = Request(messages=user("Hi"), params=greedy(10))
    asyncio.run(solo_text(engine, seen.messages, seen.params))
    requests = [
        seen,  # stored whole
        Request(messages=[*opening, {"role": "assistant", "content": reply}, *user("Why?")], params=greedy(35)),
        Request(messages=user("What is two plus two, in words?"), params=greedy(20)),  # shares the template's start
        Request(messages=[{"role": "system", "content": "Be terse."}, *user("Hi")], params=greedy(28)),
    ]
    engine.scheduler.prefixes.clear()
    alone = [asyncio.run(solo_text(engine, r.messages, r.params)) for r in requests]
    engine.scheduler.prefixes.clear()
    for messages in (seen.messages, opening):  # the first row's whole prompt, the second's first turn
        asyncio.run(solo_text(engine, messages, greedy(1)))
    hits, passes = engine.scheduler.prefixes.hits, engine.stats.prefill_passes

    collectors = [Collector() for _ in requests]
    with engine.scheduler.paused():
        for request, collector in zip(requests, collectors, strict=True):
            engine.scheduler.submit(Job(request=request, prompt=engine.prepare(request), deliver=collector))

    # Rows end at different steps, so the batch is trimmed around each row's inner padding too.
    assert [collector.result.text for collector in collectors] == alone
    assert engine.stats.prefill_passes - passes == 1
    # The third row shares the template's opening with a stored prompt.
    assert engine.scheduler.prefixes.hits - hits == 3

    # Each row left with its reply stored, read from its own columns around the padding.
    stored = engine.scheduler.prefixes.stored()
    assert all(keys.shape[2] == len(entry.ids) for entry in stored for keys, _ in entry.layers)
    second = [*requests[1].messages, {"role": "assistant", "content": alone[1]}, *user("Go on.")]
    saved = engine.scheduler.prefixes.tokens_saved
    from_prefix = asyncio.run(solo_text(engine, second, greedy(15)))
    assert engine.scheduler.prefixes.tokens_saved - saved > len(engine.prepare(requests[1]).ids)
    engine.scheduler.prefixes.clear()
    assert from_prefix == asyncio.run(solo_text(engine, second, greedy(15)))
