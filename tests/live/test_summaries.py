"""Summaries of a chat's oldest turns once it outgrows its model's context (conversations.live.summaries).

Over the real WebSocket, on the tiny model (a context of 1024 tokens). What
is checked is the prompt the model receives: the engine's requests are
recorded on their way in. Whether a real model keeps a fact through its
summary is tests/endpoints/test_turns.py's, on llama.cpp's server.
"""

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from conversations.live import summaries
from conversations.models import Message, Summary
from conversations.models.summaries import SAID_HEADING
from tests.inference_fixtures import TINY_CONTEXT
from tests.live.test_consumer import connect, receive_until_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SHORT = {"temperature": 0, "max_new_tokens": 8}
FACT = "Remember this: my sister's name is Oriel."
# About 250 of the tiny model's tokens: four of these and the chat no longer fits in 1024.
FILLER = "The harbour lights flicker while the fishing boats come home at dusk. " * 14


@pytest.fixture
def requests_seen(engine, monkeypatch):
    """Every request the engine gets, recorded on its way to the real engine."""
    seen = []
    stream = engine.stream

    def recording(request):
        seen.append(request)
        return stream(request)

    monkeypatch.setattr(engine, "stream", recording)
    return seen


async def send(ws, kind: str = "send", **frame) -> list[dict]:
    await ws.send_json_to({"type": kind, "params": SHORT, **frame})
    return await receive_until_end(ws)


def summary_frames(frames: list[dict]) -> list[dict]:
    return [frame["summary"] for frame in frames if frame["type"] == "summary"]


def json_of(chat, user) -> dict:
    client = Client()
    client.force_login(user)
    return client.get(f"/api/conversations/{chat.id}/").json()


async def test_the_oldest_turns_are_summarised_once_stored_and_extended(engine, requests_seen, alice, conversation):
    chat = await sync_to_async(conversation)(alice)
    ws, _, _ = await connect(chat.id, alice)
    frames = await send(ws, content=FACT)
    first_user = frames[0]["message"]["id"]
    turns = 1
    while not summary_frames(frames):
        frames = await send(ws, content=f"{turns}. {FILLER}")
        turns += 1
        assert turns <= 6, "the chat should have outgrown the tiny model's context by now"
    assert turns >= 4  # not before it had to
    (summary,) = summary_frames(frames)
    asked, answered = requests_seen[-2:]
    # The model was asked to summarise the oldest turns, the fact among them...
    assert asked.messages[0]["content"] == summaries.INSTRUCTION
    assert FACT in asked.messages[1]["content"]
    # ...and the reply's prompt has the summary in their place: not the fact's message, but the fact.
    assert f"{summaries.HEADER}\n{summary['text']}" in answered.messages[0]["content"]
    assert not any(m["role"] == "user" and FACT in m["content"] for m in answered.messages)
    assert f"{SAID_HEADING}\n- {FACT}" in answered.messages[0]["content"]  # the user's short message, word for word
    stored = await Summary.objects.select_related("until").aget(conversation=chat)
    assert stored.as_dict() == summary and stored.text  # the tiny model's notes, whatever they say
    assert stored.said == [FACT]  # the long messages are the notes' alone
    assert stored.until.role == "assistant" and stored.covered >= 2  # whole turns: a question and its reply
    assert (await sync_to_async(json_of)(chat, alice))["summary"] == summary

    # The next turn reads the stored summary: nothing is summarised again.
    frames = await send(ws, content="And what comes next?")
    assert summary_frames(frames) == []
    assert f"{summaries.HEADER}\n{summary['text']}" in requests_seen[-1].messages[0]["content"]

    # Once more turns fall out, the summary is extended: the model reads the old one with them.
    while not summary_frames(frames):
        frames = await send(ws, content=f"{turns}. {FILLER}")
        turns += 1
        assert turns <= 12
    (longer,) = summary_frames(frames)
    assert f"Summary so far:\n{stored.text}" in requests_seen[-2].messages[1]["content"]
    assert longer["until"] > summary["until"] and f"- {FACT}" in longer["text"]  # the user's words stay
    assert await Summary.objects.filter(conversation=chat).acount() == 2  # the shorter one serves its branches
    assert first_user not in {longer["until"], summary["until"]}
    await ws.disconnect()


async def test_an_edit_above_the_summary_is_a_branch_with_its_own(engine, requests_seen, alice, conversation):
    chat = await sync_to_async(conversation)(alice)
    ws, _, _ = await connect(chat.id, alice)
    sent = [await send(ws, content=FACT)]
    while not summary_frames(sent[-1]):
        sent.append(await send(ws, content=f"{len(sent)}. {FILLER}"))
    (summary,) = summary_frames(sent[-1])
    until = await Message.objects.aget(id=summary["until"])
    # Edit the question the summarised reply answered: a branch above the summary, long enough to need one.
    edited = await send(ws, "edit", message_id=until.parent_id, content=f"Instead: {FILLER} {FILLER} {FILLER}")
    (own,) = summary_frames(edited)
    assert own["until"] != summary["until"] and own["text"]
    assert f"{summaries.HEADER}\n{own['text']}" in requests_seen[-1].messages[0]["content"]
    assert (await sync_to_async(json_of)(chat, alice))["summary"] == own
    # Back on the first branch, its own summary applies again: the `path` frame says so.
    await ws.send_json_to({"type": "switch", "message_id": sent[-1][-1]["message_id"]})
    path = await ws.receive_json_from(timeout=10)
    assert path["type"] == "path" and path["summary"] == summary
    await ws.disconnect()


async def test_a_chat_that_fits_is_read_whole_and_summaries_can_be_turned_off(
    engine, requests_seen, alice, conversation, settings
):
    chat = await sync_to_async(conversation)(alice)
    ws, _, _ = await connect(chat.id, alice)
    frames = await send(ws, content=FACT)
    assert summary_frames(frames) == []
    assert [m["content"] for m in requests_seen[-1].messages] == [FACT]
    settings.CHAT_SUMMARIES = False
    for turn in range(5):
        frames = await send(ws, content=f"{turn}. {FILLER}")
        assert summary_frames(frames) == [] and frames[-1]["finish_reason"] in ("stop", "length")
    assert await Summary.objects.filter(conversation=chat).acount() == 0  # the engine left turns out instead
    assert summaries.summary_tokens(TINY_CONTEXT) == TINY_CONTEXT // summaries.SUMMARY_SHARE
    await ws.disconnect()
