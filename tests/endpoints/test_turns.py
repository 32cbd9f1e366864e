"""Chats on an endpoint's model, through the real socket path (WebsocketCommunicator) and a real llama.cpp server.

This process serves the tiny local model and, through its registry, the
llama.cpp server's `smollm2`: turns, regenerate and edit, a switch of model
between turns, who may use which model, and an endpoint that dies, is down
or hangs.
"""

from __future__ import annotations

import asyncio
import signal

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group

from conversations.endpoints import catalog
from conversations.endpoints.registry import Registry
from conversations.live import state
from conversations.live.runners.local import LocalRunner
from conversations.models import Conversation, ModelOption, Summary
from tests.live.test_consumer import connect, joined_tokens, receive_until_end, stored_reply

# About the endpoint engine: its turns write through turns.py and replies.py as the local engine's do,
# which tests/live runs on PostgreSQL too; here they run on SQLite only (.ci/run's time).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio, pytest.mark.one_database]

ON_LLAMA = {"temperature": 0, "max_new_tokens": 12, "model": "smollm2"}
LOCAL = {"temperature": 0, "max_new_tokens": 12, "model": "tiny-llama"}


def serving_both(tiny_engine, *servers, timeout: float = 30.0) -> state.Live:
    """This process's state: the tiny local model and the llama.cpp servers' smollm2."""
    endpoints = {f"llama{n}": {"url": server.url, "key": ""} for n, server in enumerate(servers)}
    models = Registry(tiny_engine, "tiny-llama", endpoints, timeout=timeout, admin_endpoints=False)
    models.refresh()
    return state.Live(runner=LocalRunner(models))


@pytest.fixture
def both(tiny_engine, llama_server):
    with state.swapped(serving_both(tiny_engine, llama_server)) as live:
        yield live


@pytest.fixture
def chat(alice, conversation):
    return conversation(alice, title="", model_name="tiny-llama")


async def test_a_chat_on_an_endpoint_model_streams_stores_and_names_its_model(both, chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "What is the capital of France?", "params": ON_LLAMA})
    frames = await receive_until_end(ws, timeout=60)
    kinds = [frame["type"] for frame in frames]
    assert kinds[:2] == ["message", "start"] and kinds[-1] == "end" and set(kinds[2:-1]) == {"token"}
    assert frames[1]["model"] == "smollm2"
    reply = await stored_reply(chat)
    assert reply.status == "complete" and reply.content == joined_tokens(frames) != ""
    assert reply.model_name == "smollm2" and reply.completion_tokens > 0
    assert frames[-1]["usage"]["completion_tokens"] == reply.completion_tokens
    await sync_to_async(chat.refresh_from_db)()
    assert chat.model_name == "smollm2"  # the conversation's model from this turn on
    await ws.disconnect()


async def test_regenerate_edit_and_a_switch_of_model_between_turns(both, chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Hello", "params": LOCAL})
    first = await receive_until_end(ws)
    assert first[1]["model"] == "tiny-llama"
    # Switched to the endpoint's model; regenerate keeps to it (the conversation's model now).
    await ws.send_json_to({"type": "regenerate", "params": ON_LLAMA})
    second = await receive_until_end(ws, timeout=60)
    await ws.send_json_to({"type": "regenerate"})
    third = await receive_until_end(ws, timeout=60)
    assert second[0]["model"] == third[0]["model"] == "smollm2"
    assert joined_tokens(second) == joined_tokens(third) != joined_tokens(first)  # greedy on llama.cpp
    user_id = first[0]["message"]["id"]
    await ws.send_json_to({"type": "edit", "message_id": user_id, "content": "Hi there", "params": LOCAL})
    edited = await receive_until_end(ws)
    assert edited[1]["model"] == "tiny-llama" and edited[0]["message"]["content"] == "Hi there"
    models = await sync_to_async(lambda: list(chat.messages.filter(role="assistant").values_list("model_name")))()
    assert [m for (m,) in models] == ["tiny-llama", "smollm2", "smollm2", "tiny-llama"]
    await ws.disconnect()


async def test_a_model_that_does_not_exist_or_is_not_yours_is_invalid(both, chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Hi", "params": {"model": "gpt-99"}})
    assert await ws.receive_json_from(timeout=10) == {
        "type": "error",
        "code": "invalid",
        "message": "There is no model 'gpt-99' you may use.",
    }
    # Staff give smollm2 to a group alice is not in.
    team = await sync_to_async(Group.objects.create)(name="gpu-team")
    await sync_to_async(lambda: ModelOption.objects.get_or_create(model_id="smollm2")[0].groups.add(team))()
    await ws.send_json_to({"type": "send", "content": "Hi", "params": ON_LLAMA})
    refused = await ws.receive_json_from(timeout=10)
    assert refused["code"] == "invalid" and "smollm2" in refused["message"]
    listed = await sync_to_async(catalog.models_for)(alice, both.models)
    assert [m["id"] for m in listed["models"]] == ["tiny-llama"]
    # In the group, she may.
    await sync_to_async(alice.groups.add)(team)
    await ws.send_json_to({"type": "send", "content": "Hi", "params": ON_LLAMA})
    frames = await receive_until_end(ws, timeout=60)
    assert frames[-1]["status"] == "complete" and frames[1]["model"] == "smollm2"
    await ws.disconnect()


async def test_an_endpoint_killed_mid_reply_keeps_the_text_and_the_chat_usable(tiny_engine, llama_factory, chat, alice):
    server = llama_factory()
    with state.swapped(serving_both(tiny_engine, server)):
        ws, _, _ = await connect(chat.id, alice)
        long = ON_LLAMA | {"max_new_tokens": 2000}
        await ws.send_json_to({"type": "send", "content": "Write a long story about a dragon.", "params": long})
        frames = []
        while sum(frame["type"] == "token" for frame in frames) < 3:
            frames.append(await ws.receive_json_from(timeout=60))
        server.process.kill()
        frames += await receive_until_end(ws, timeout=60)
        assert [frame["type"] for frame in frames][-2:] == ["error", "end"]
        assert frames[-2]["code"] == "model_unavailable" and frames[-1]["status"] == "error"
        reply = await stored_reply(chat)
        assert reply.status == "error" and reply.content == joined_tokens(frames) != ""
        # The conversation goes on, on another model.
        await ws.send_json_to({"type": "send", "content": "Still there?", "params": LOCAL})
        after = await receive_until_end(ws)
        assert after[-1]["status"] == "complete"
        await ws.disconnect()


async def test_an_endpoint_down_when_a_turn_starts_then_back_without_a_restart(tiny_engine, llama_factory, chat, alice):
    server = llama_factory()
    live = serving_both(tiny_engine, server)
    with state.swapped(live):
        port = server.port
        server.stop()
        ws, _, _ = await connect(chat.id, alice)
        await ws.send_json_to({"type": "send", "content": "Hello?", "params": ON_LLAMA})
        frames = await receive_until_end(ws, timeout=60)
        assert [frame["type"] for frame in frames][-2:] == ["error", "end"]
        assert frames[-2]["code"] == "model_unavailable" and frames[-1]["status"] == "error"
        assert live.models.health()["llama0"]["status"] == "down"
        await sync_to_async(llama_factory)(port=port)
        await sync_to_async(live.models.refresh)(force=True)  # what the discovery thread does on its own
        await ws.send_json_to({"type": "send", "content": "Hello again", "params": ON_LLAMA})
        frames = await receive_until_end(ws, timeout=60)
        assert frames[-1]["status"] == "complete" and joined_tokens(frames)
        await ws.disconnect()


async def test_a_hung_endpoint_times_out_and_other_chats_go_on(tiny_engine, llama_factory, alice, bob, conversation):
    server = llama_factory()
    with state.swapped(serving_both(tiny_engine, server, timeout=3)):
        waiting_chat = await sync_to_async(conversation)(alice, model_name="tiny-llama")
        other_chat = await sync_to_async(conversation)(bob, model_name="tiny-llama")
        waiting, _, _ = await connect(waiting_chat.id, alice)
        other, _, _ = await connect(other_chat.id, bob)
        server.process.send_signal(signal.SIGSTOP)  # it answers nothing, and keeps its socket
        await waiting.send_json_to({"type": "send", "content": "Hello?", "params": ON_LLAMA})
        hung = asyncio.create_task(receive_until_end(waiting, timeout=60))
        # Meanwhile another user's chat on the local model runs to its end, before the timeout.
        await other.send_json_to({"type": "send", "content": "Hi", "params": LOCAL})
        frames = await receive_until_end(other, timeout=2)
        assert frames[-1]["status"] == "complete" and not hung.done()
        frames = await hung
        assert frames[-2]["code"] == "model_unavailable" and "timeout" in frames[-2]["message"]
        await waiting.disconnect()
        await other.disconnect()


async def test_an_endpoint_model_writes_the_chats_title_after_its_first_reply(both, chat, alice, settings):
    settings.CHAT_TITLES = True
    ws, _, _ = await connect(chat.id, alice)
    question = "What is the capital of France?"
    await ws.send_json_to({"type": "send", "content": question, "params": ON_LLAMA})
    frames = await receive_until_end(ws, timeout=60)
    assert frames[0]["title"] == question
    titled = await ws.receive_json_from(timeout=60)  # after the `end`
    assert titled["type"] == "title" and titled["title"] != question and 2 <= len(titled["title"]) <= 60
    stored = await Conversation.objects.aget(id=chat.id)
    assert (stored.title, stored.title_source) == (titled["title"], "model")
    await ws.disconnect()


@pytest.fixture
def llama_of_512(tiny_engine, llama_server):
    """llama-cpp-python's server does not say its context: the admin's figure (ModelOption.context_length)
    is the model's, as docs/models.md tells. 512, within the session server's 2048: a chat outgrows it soon."""
    ModelOption.objects.create(model_id="smollm2", context_length=512)
    models = Registry(tiny_engine, "tiny-llama", {"llama": {"url": llama_server.url, "key": ""}}, timeout=60)
    models.refresh()
    assert models.context_length("smollm2") == 512
    with state.swapped(state.Live(runner=LocalRunner(models))) as live:
        yield live


async def test_a_long_chat_keeps_its_first_fact_through_the_real_models_summary(llama_of_512, chat, alice, monkeypatch):
    """SmolLM2 on llama.cpp's server summarises the turns that no longer fit; the fact is checked in
    the prompt the server gets once the fact's own message is no longer in it (docs/history.md)."""
    from conversations.endpoints.engine import EndpointEngine
    from conversations.live import summaries

    seen = []
    stream = EndpointEngine.stream

    def recording(self, request):
        seen.append(request)
        return stream(self, request)

    monkeypatch.setattr(EndpointEngine, "stream", recording)
    ws, _, _ = await connect(chat.id, alice)
    frames: list[dict] = []
    sent = 0
    while not any(f["type"] == "summary" for f in frames):
        await ws.send_json_to({"type": "send", "content": [FACT, *NOTES][sent], "params": ON_LLAMA})
        frames = await receive_until_end(ws, timeout=120)
        assert frames[-1]["finish_reason"] in ("stop", "length"), frames[-1]
        sent += 1
    assert sent >= 3, "summarised before the chat outgrew the context"
    (summary,) = [f["summary"] for f in frames if f["type"] == "summary"]
    prompt = seen[-1].messages
    assert not any(m["role"] == "user" and FACT in m["content"] for m in prompt)  # the fact's message is out...
    assert summary["text"] in prompt[0]["content"] and FACT in summary["text"]  # ...and the fact is in
    stored = await Summary.objects.aget(until_id=summary["until"])
    assert stored.text and stored.text in prompt[0]["content"]  # with SmolLM2's own notes of the rest
    asked = seen[-2].messages  # what SmolLM2 was asked to summarise
    assert asked[0]["content"] == summaries.INSTRUCTION and NOTES[0][:100] in asked[1]["content"]
    await ws.disconnect()


FACT = "Please remember that my sister's name is Oriel."
# Five days of travel notes, about 170 tokens each by the endpoint estimate (docs/models.md).
NOTES = [
    (
        "Part one of my travel notes. We left the city early on Monday and drove north along the coast road. "
        "The weather was grey but dry, and we stopped twice: once at a bakery in a small fishing town, where "
        "the owner told us about the storm that flooded the harbour last winter, and once at a lighthouse "
        "that has been turned into a museum. Its keeper's logbooks are on display, with entries going back to "
        "1870, and a room upstairs shows how the lamp and its lenses were cleaned every evening. We reached "
        "the guest house after dark and ate soup by the fire while the wind rattled the windows."
    ),
    (
        "Part two of my travel notes. On Tuesday we walked the cliff path from the guest house to the next "
        "bay, about eleven kilometres. The path climbs steeply at first and then follows the edge of the "
        "fields, with sheep grazing right up to the fence. We saw seals on the rocks below and a pair of "
        "falcons hunting over the heather. Lunch was bread, cheese and apples on a bench above the beach. In "
        "the afternoon the tide came in quickly and we had to wait an hour for the causeway to the island to "
        "clear again."
    ),
    (
        "Part three of my travel notes. Wednesday was wet, so we spent it in the old market town. The covered "
        "market sells wool, honey and smoked fish, and a man at one stall carves spoons from driftwood while "
        "you watch. The town library has a small exhibition about the railway that closed in 1965; the "
        "station is now a cafe, and the platform clock still works. In the evening a folk band played in the "
        "pub, mostly songs about the sea, and an old fisherman sang one in a language none of us understood."
    ),
    (
        "Part four of my travel notes. On Thursday we took the ferry to the island. The crossing took forty "
        "minutes and the sea was calm. The island has one road, one shop and a ruined chapel on the hill, and "
        "its school has only nine pupils. We hired bicycles and rode to the north beach, where the sand is "
        "white and the water is clear enough to see the weed swaying on the bottom. The last ferry back left "
        "at five, and we nearly missed it because a flock of geese blocked the road for ten minutes."
    ),
    (
        "Part five of my travel notes. Friday was our last day. We packed early, thanked the hosts, and drove "
        "back south through the hills instead of along the coast. The road crosses a high pass where snow "
        "still lay in the ditches, and then drops into a valley of orchards. We bought cider and pears from a "
        "farm stall, stopped at a castle that was closed for repairs, and got home just before midnight, "
        "tired but already planning the next trip for the spring."
    ),
]
