"""conversations.live.turns without a socket: any caller starts a turn and follows its frames; shutdown in-process."""

import asyncio

import pytest
from asgiref.sync import sync_to_async

from conversations.live import replies, shutdown, state, turns
from conversations.live.frames import follow
from conversations.models import Message
from inference import GenerationParams
from tests.conftest import serving
from tests.live.test_consumer import connect, joined_tokens, receive_until_end, send_long, stored_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

GREEDY = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 12})


@pytest.fixture
def chat(engine, alice, conversation):
    return conversation(alice, title="")


async def test_a_caller_without_a_socket_starts_a_turn_and_follows_its_frames(chat):
    async with follow(chat.id) as following:
        turn = await turns.start(chat.id, "send", GREEDY, "Hello")
        frames = [frame async for frame in following.until_end(turn.message_id)]
    kinds = [f["type"] for f in frames]
    assert kinds[:2] == ["message", "start"] and kinds[-1] == "end"
    assert frames[-1]["message_id"] == turn.message_id
    reply = await stored_reply(chat)
    assert reply.content == joined_tokens(frames) != "" and reply.status == "complete"
    # One formula: the frame's speed is the stored message's.
    assert frames[-1]["timing"]["tokens_per_s"] == reply.tokens_per_s


async def test_a_second_turn_while_one_streams_is_refused_busy(chat):
    await turns.start(chat.id, "send", GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 900}), "Hi")
    with pytest.raises(turns.Refused) as refused:
        await turns.start(chat.id, "send", GREEDY, "Again")
    assert refused.value.code == "busy"
    assert await turns.stop(chat.id)
    reply = state.current().runner.get(chat.id)
    await asyncio.wait_for(reply.task, 30)


async def test_finish_is_done_once_whoever_calls_it(chat):
    async with follow(chat.id) as following:
        turn = await turns.start(
            chat.id, "send", GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 900}), "Hi"
        )
        async for frame in following.until_end(turn.message_id):
            if frame["type"] == "token":
                break  # the reply has some text (recorded before it is published)
    live = state.current().runner.get(chat.id)
    assert await replies.finish(chat.id, turn.message_id, replies.Ending("interrupted", live.record.text))
    await turns.stop(chat.id)
    await asyncio.wait_for(live.task, 30)
    reply = await stored_reply(chat)
    assert reply.status == "interrupted"  # the runner's own finish came second and changed nothing


async def test_stopping_gracefully_refuses_new_turns_lets_live_ones_finish_and_closes_sockets(
    make_engine, alice, conversation, settings
):
    settings.CHAT_SHUTDOWN_GRACE = 120
    live = serving(await sync_to_async(make_engine)())  # stop_gracefully() closes its engine
    state.install(live)  # the `live` fixture puts its own back after the test
    live_chat = await sync_to_async(conversation)(alice)
    idle_chat = await sync_to_async(conversation)(alice)
    ws, _, _ = await connect(live_chat.id, alice)
    idle, _, _ = await connect(idle_chat.id, alice)
    frames = await send_long(ws, "Talk a lot")
    stopping = asyncio.create_task(shutdown.stop_gracefully())
    while live.accepting:
        await asyncio.sleep(0)  # until the task has begun
    await idle.send_json_to({"type": "send", "content": "Hello?"})
    refused = await idle.receive_json_from(timeout=30)
    frames += await receive_until_end(ws, timeout=60)
    await asyncio.wait_for(stopping, 60)
    assert refused["code"] == "busy" and "restarting" in refused["message"]
    assert frames[-1]["finish_reason"] == "length"  # it had its grace
    assert (await ws.receive_output())["code"] == 4503
    assert (await idle.receive_output())["code"] == 4503
    reply = await stored_reply(live_chat)
    assert reply.status == "complete" and reply.content == joined_tokens(frames) != ""
    assert not await sync_to_async(Message.objects.filter(status="streaming").exists)()
