"""Continue over the chat socket: the last reply, cut short, goes on in place (docs/protocol.md).

The tiny model never ends a reply by itself, so its replies end by length.
"""

import pytest
from asgiref.sync import sync_to_async

from conversations.models import DailyUsage, Message, Reservation
from inference import GenerationParams, Request
from tests.live.test_consumer import connect, joined_tokens, receive_until_end, send_long, stored_reply

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

SHORT = {"temperature": 0, "max_new_tokens": 6}


@pytest.fixture
def chat(engine, alice, conversation):
    return conversation(alice, title="")


@sync_to_async
def day_usage(user) -> tuple[int, int, int]:
    usage = DailyUsage.objects.get(user=user)
    return usage.tokens, usage.reserved, usage.replies


async def test_continue_extends_a_reply_cut_by_length_and_every_tab_gets_the_stored_text(chat, alice, engine):
    ws, _, _ = await connect(chat.id, alice)
    other, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Tell me a story", "params": SHORT})
    first = await receive_until_end(ws)
    await receive_until_end(other)
    reply_id, before = first[-1]["message_id"], joined_tokens(first)
    assert first[-1]["finish_reason"] == "length"
    spent_before = (await day_usage(alice))[0]
    first_reply = await stored_reply(chat)

    await ws.send_json_to({"type": "continue", "params": SHORT})
    frames = await receive_until_end(ws)
    seen_by_other = await receive_until_end(other)
    start, end = frames[0], frames[-1]
    assert start["type"] == "start" and start["message_id"] == reply_id and start["content"] == before
    assert end["message_id"] == reply_id and end["finish_reason"] == "length", frames
    reply = await stored_reply(chat)
    # One reply, grown in place: its old text then the new, as both sockets have it.
    assert await sync_to_async(chat.messages.count)() == 2
    assert reply.content == before + joined_tokens(frames) == seen_by_other[0]["content"] + joined_tokens(seen_by_other)
    assert len(reply.content) > len(before)
    assert reply.completion_tokens == end["usage"]["completion_tokens"] == 12
    assert reply.prompt_tokens > first_reply.prompt_tokens
    assert reply.ttft_ms == first_reply.ttft_ms and reply.duration_ms > first_reply.duration_ms
    # The model read the conversation and the reply so far, and went on after it.
    history = [{"role": "user", "content": "Tell me a story"}]
    prompt = engine.prepare(Request(messages=history, params=GenerationParams(), prefill=before)).ids
    assert engine.tokenizer.decode(prompt).endswith("<|im_start|>assistant\n" + before)
    # The quota is charged for the second turn alone, and it is no second reply.
    tokens, reserved, replies = await day_usage(alice)
    continued = reply.prompt_tokens - first_reply.prompt_tokens + 6
    assert (tokens - spent_before, reserved, replies) == (continued, 0, 1)
    assert not await sync_to_async(Reservation.objects.exists)()
    await ws.disconnect()
    await other.disconnect()


async def test_a_stopped_reply_continues_and_can_be_stopped_again(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    frames = await send_long(ws, "Tell me a long story")
    await ws.send_json_to({"type": "stop"})
    frames += await receive_until_end(ws)
    stopped = joined_tokens(frames)
    await ws.send_json_to({"type": "continue", "params": {"max_new_tokens": 900}})
    more = [await ws.receive_json_from(timeout=30)]
    while not any(f["type"] == "token" for f in more):
        more.append(await ws.receive_json_from(timeout=30))
    await ws.send_json_to({"type": "stop"})
    more += await receive_until_end(ws)
    reply = await stored_reply(chat)
    assert more[-1]["status"] == reply.status == "cancelled"
    assert reply.content == stopped + joined_tokens(more)
    await ws.disconnect()


@sync_to_async
def end_by_itself(reply: Message) -> None:
    Message.objects.filter(id=reply.id).update(finish_reason="stop", status="complete")


async def test_only_a_last_reply_cut_short_can_be_continued(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "continue"})
    assert (await ws.receive_json_from())["code"] == "invalid"  # nothing to continue
    await ws.send_json_to({"type": "send", "content": "Hi", "params": SHORT})
    await receive_until_end(ws)
    await ws.send_json_to({"type": "continue", "params": {"model": "another"}})
    assert (await ws.receive_json_from())["code"] == "invalid"  # the model that wrote it continues it
    reply = await stored_reply(chat)
    await end_by_itself(reply)
    await ws.send_json_to({"type": "continue"})
    error = await ws.receive_json_from()
    assert error["code"] == "invalid" and "cut short" in error["message"]
    await sync_to_async(reply.refresh_from_db)()
    assert (reply.status, reply.finish_reason) == ("complete", "stop")
    await ws.disconnect()


async def test_continue_is_busy_while_a_reply_streams(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await send_long(ws, "Tell me a long story")
    await ws.send_json_to({"type": "continue"})
    frame = await ws.receive_json_from(timeout=10)
    while frame["type"] == "token":
        frame = await ws.receive_json_from(timeout=10)
    assert frame["type"] == "error" and frame["code"] == "busy"
    await ws.send_json_to({"type": "stop"})
    await receive_until_end(ws)
    await ws.disconnect()
