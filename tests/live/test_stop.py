"""`stop` strings in the engine, on the tiny model: the reply ends before the first one, as "stop"."""

import pytest

from inference import GenerationParams, InvalidParams, Request
from inference.streaming import IncrementalDetokenizer
from tests.inference.test_engine import run, text_of, user


def greedy(max_new_tokens: int, **fields) -> GenerationParams:
    return GenerationParams(temperature=0, max_new_tokens=max_new_tokens, **fields)


@pytest.mark.asyncio
async def test_a_stop_string_ends_the_reply_just_before_it(tiny_engine):
    messages = user("Tell me a story")
    _, free = await run(tiny_engine, Request(messages=messages, params=greedy(40)))
    text = free.text
    assert len(text) > 12, text
    stop = text[8:11]  # a few characters from inside the reply, maybe across a token boundary
    cut = text[: text.find(stop)]

    events, result = await run(tiny_engine, Request(messages=messages, params=greedy(40, stop=[stop, "never-seen"])))

    assert result.finish_reason == "stop"
    assert result.text == cut
    assert text_of(events) == cut  # no chunk ever showed the stop string or what followed
    assert result.completion_tokens < free.completion_tokens


@pytest.mark.asyncio
async def test_text_held_back_for_a_possible_stop_string_is_released(tiny_engine):
    messages = user("Tell me a story")
    _, free = await run(tiny_engine, Request(messages=messages, params=greedy(30)))
    # Every character of the reply could begin this stop string, which never completes.
    never = free.text[-1] + "\x00"
    events, result = await run(tiny_engine, Request(messages=messages, params=greedy(30, stop=[never])))
    assert result.text == text_of(events) == free.text
    assert result.finish_reason == free.finish_reason


def test_the_detokenizer_holds_a_possible_stop_string_and_cuts_a_real_one(tiny_model):
    tokenizer = tiny_model[1]
    ids = tokenizer.encode("Hello world, goodbye moon", add_special_tokens=False)
    detokenizer = IncrementalDetokenizer(tokenizer, stop=["goodbye"])
    shown = "".join(detokenizer.push(token) for token in ids) + detokenizer.flush()
    assert detokenizer.stopped
    assert shown == detokenizer.text == "Hello world, "


@pytest.mark.parametrize(
    "stop, message",
    [
        ("END", "stop must be a list of non-empty strings"),
        ([""], "stop must be a list of non-empty strings"),
        ([1], "stop must be a list of non-empty strings"),
        (["a", "b", "c", "d", "e"], "stop takes at most 4 strings"),
    ],
)
def test_bad_stop_strings_are_refused(stop, message):
    with pytest.raises(InvalidParams, match=message):
        GenerationParams(stop=stop)


def test_stop_round_trips_through_json_lists():
    params = GenerationParams(stop=("###", "\n\n"))
    again = GenerationParams.from_dict({**params.to_dict(), "stop": list(params.to_dict()["stop"])})
    assert again == params and hash(again) == hash(params)
