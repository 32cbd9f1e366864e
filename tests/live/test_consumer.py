"""The chat WebSocket, driven in-process with WebsocketCommunicator and a tiny real model."""

import asyncio
import socket
import threading

import pytest
from asgiref.sync import sync_to_async
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.test import Client

from chatsite.routing import websocket_application
from chatsite.settings import channel_layers
from conversations.live import state
from conversations.live.consumers import LAYER_DOWN
from conversations.live.frames import publish
from conversations.models import Conversation, Message
from inference import GenerationParams, Request
from tests.conftest import serving

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]

GREEDY = {"temperature": 0, "max_new_tokens": 12}
LONG = {"temperature": 0, "max_new_tokens": 900}  # ~1 s on the tiny model: time to stop it
ORIGIN = (b"origin", b"http://127.0.0.1")


@pytest.fixture
def chat(engine, alice, conversation):
    return conversation(alice, title="")


def session_cookie(user) -> bytes:
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}".encode()


async def connect(conversation_id, user=None, origin=ORIGIN):
    headers = [origin] if origin else []
    if user is not None:
        cookie = await sync_to_async(session_cookie)(user)
        headers.append((b"cookie", cookie))
    communicator = WebsocketCommunicator(websocket_application, f"/ws/chat/{conversation_id}/", headers=headers)
    connected, code = await communicator.connect(timeout=5)
    return communicator, connected, code


async def receive_until_end(communicator, timeout=30) -> list[dict]:
    frames = []
    while True:
        frame = await communicator.receive_json_from(timeout=timeout)
        frames.append(frame)
        if frame["type"] in ("end",):
            return frames


def joined_tokens(frames) -> str:
    return "".join(f["text"] for f in frames if f["type"] == "token")


async def send_long(communicator, content: str) -> list[dict]:
    """Ask for a LONG reply; the frames up to its first token (it is then streaming)."""
    await communicator.send_json_to({"type": "send", "content": content, "params": LONG})
    frames = []
    while not any(f["type"] == "token" for f in frames):
        frames.append(await communicator.receive_json_from(timeout=30))
    return frames


@sync_to_async
def stored_reply(conversation) -> Message:
    return conversation.messages.filter(role="assistant").last()


@sync_to_async
def greedy_alone(engine, messages, max_new_tokens=12) -> str:
    params = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": max_new_tokens})
    return engine.generate_batch([Request(messages=messages, params=params)])[0].text


async def test_it_streams_a_reply_and_stores_it(chat, alice, engine):
    ws, connected, _ = await connect(chat.id, alice)
    assert connected
    await ws.send_json_to({"type": "send", "content": "Hello there", "params": GREEDY})
    frames = await receive_until_end(ws)
    kinds = [f["type"] for f in frames]
    assert kinds[0] == "message" and kinds[1] == "start" and kinds[-1] == "end"
    assert set(kinds[2:-1]) <= {"token", "queued"}
    assert frames[0]["message"]["content"] == "Hello there"
    end = frames[-1]
    assert end["message_id"] == frames[1]["message_id"]
    reply = await stored_reply(chat)
    assert reply.id == end["message_id"]
    assert joined_tokens(frames) == reply.content
    assert reply.status == "complete" and reply.finish_reason == end["finish_reason"] in ("stop", "length")
    assert reply.completion_tokens == end["usage"]["completion_tokens"] > 0
    assert reply.prompt_tokens == end["usage"]["prompt_tokens"] > 0
    assert reply.duration_ms is not None and end["timing"]["tokens_per_s"] > 0
    # The streamed text is exactly what the model says when asked directly.
    assert reply.content == await greedy_alone(engine, [{"role": "user", "content": "Hello there"}])
    await ws.disconnect()


async def test_the_first_message_titles_the_conversation(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Plan a trip to Lisbon in spring", "params": GREEDY})
    first = await receive_until_end(ws)
    await sync_to_async(chat.refresh_from_db)()
    assert chat.title == "Plan a trip to Lisbon in spring"
    # Every tab hears the new title with the message; later messages keep it.
    assert first[0]["type"] == "message" and first[0]["title"] == chat.title
    await ws.send_json_to({"type": "send", "content": "And in autumn?", "params": GREEDY})
    second = await receive_until_end(ws)
    assert second[0]["type"] == "message" and "title" not in second[0]
    await ws.disconnect()


async def test_the_conversation_settings_apply(engine, alice, conversation):
    convo = await sync_to_async(conversation)(alice, system_prompt="You are terse.", temperature=0, max_new_tokens=5)
    ws, _, _ = await connect(convo.id, alice)
    await ws.send_json_to({"type": "send", "content": "Hi"})
    frames = await receive_until_end(ws)
    reply = await stored_reply(convo)
    assert frames[-1]["usage"]["completion_tokens"] <= 5
    history = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}]
    assert reply.content == await greedy_alone(engine, history, max_new_tokens=5)
    await ws.disconnect()


async def test_stop_keeps_the_text_so_far(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    frames = await send_long(ws, "Tell me a long story")
    await ws.send_json_to({"type": "stop"})
    frames += await receive_until_end(ws)
    end = frames[-1]
    assert end["finish_reason"] == "cancelled" and end["status"] == "cancelled"
    reply = await stored_reply(chat)
    assert reply.status == "cancelled" and reply.finish_reason == "cancelled"
    assert reply.content == joined_tokens(frames) != ""
    assert reply.completion_tokens < 900
    await ws.disconnect()


async def test_regenerate_adds_a_variant_and_keeps_the_old_reply(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Hello", "params": GREEDY})
    first = await receive_until_end(ws)
    old_id = first[-1]["message_id"]
    await ws.send_json_to({"type": "regenerate", "params": GREEDY})
    frames = await receive_until_end(ws)
    new_id = frames[-1]["message_id"]
    user_id = first[0]["message"]["id"]
    assert frames[0] == {
        "type": "start",
        "message_id": new_id,
        "model": "tiny-llama",  # the model that writes it
        "replaces": old_id,
        "parent": user_id,
        "siblings": [old_id, new_id],
    }
    messages = await sync_to_async(lambda: list(chat.messages.values_list("role", "content", "parent_id")))()
    assert messages == [
        ("user", "Hello", None),
        ("assistant", joined_tokens(first), user_id),
        ("assistant", joined_tokens(frames), user_id),
    ]
    assert joined_tokens(frames) == joined_tokens(first)  # greedy: same answer again
    await ws.disconnect()


async def test_regenerate_needs_a_reply(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "regenerate"})
    assert (await ws.receive_json_from())["code"] == "invalid"
    await ws.disconnect()


async def test_it_answers_busy_while_a_reply_streams(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "First", "params": LONG})
    await ws.receive_json_from(timeout=10)  # message
    await ws.receive_json_from(timeout=10)  # start
    await ws.send_json_to({"type": "send", "content": "Second", "params": GREEDY})
    frames = []
    while not any(f["type"] == "error" for f in frames):
        frames.append(await ws.receive_json_from(timeout=30))
    assert frames[-1]["code"] == "busy"
    await ws.send_json_to({"type": "stop"})
    await receive_until_end(ws)
    contents = await sync_to_async(lambda: list(chat.messages.values_list("content", flat=True)))()
    assert "Second" not in contents
    await ws.disconnect()


async def test_it_refuses_anonymous_users(chat):
    ws, connected, code = await connect(chat.id, user=None)
    assert not connected and code == 4401


async def test_it_refuses_other_users_conversations(chat, bob):
    ws, connected, code = await connect(chat.id, bob)
    assert not connected and code == 4404


async def test_it_refuses_an_unknown_conversation(engine, alice):
    ws, connected, code = await connect("00000000-0000-0000-0000-000000000000", alice)
    assert not connected and code == 4404


async def test_it_refuses_foreign_origin(chat, alice):
    ws, connected, _ = await connect(chat.id, alice, origin=(b"origin", b"http://evil.example"))
    assert not connected


@pytest.mark.parametrize(
    "frame, message",
    [
        ("not json", "JSON"),
        ('["send"]', "Unknown frame type"),
        ('{"type": "dance"}', "Unknown frame type"),
        ('{"type": "send", "content": "   "}', "needs some text"),
        ('{"type": "send", "content": 42}', "needs some text"),
        ('{"type": "send", "content": "' + "x" * 16001 + '"}', "at most 16000"),
        ('{"type": "send", "content": "hi", "params": {"temperature": 3}}', "temperature must be between 0 and 2"),
        ('{"type": "send", "content": "hi", "params": "hot"}', "params must be an object"),
        ('{"type": "stop"}', "No reply"),
        ('{"type": ["send"]}', "Unknown frame type"),
        ('{"type": {"a": 1}}', "Unknown frame type"),
        ("[" * 2000 + "]" * 2000, "JSON"),
        ('{"type": "send", "content": "a\\ud800b"}', "lone surrogates"),
        ('{"type": "send", "content": "hi", "params": {"temperature": [1]}}', "temperature"),
        ('{"type": "send", "content": "hi", "params": {"max_new_tokens": {"a": 1}}}', "max_new_tokens"),
        ('{"type": "regenerate", "params": 5}', "params must be an object"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(chat, alice, frame, message):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_to(text_data=frame)
    error = await ws.receive_json_from()
    assert error["type"] == "error" and error["code"] == "invalid" and message in error["message"]
    await ws.send_json_to({"type": "send", "content": "Still here?", "params": GREEDY})
    frames = await receive_until_end(ws)
    assert frames[-1]["type"] == "end"
    count = await sync_to_async(chat.messages.filter(role="user").count)()
    assert count == 1  # the bad frame stored nothing
    await ws.disconnect()


async def test_two_tabs_see_the_same_stream(chat, alice):
    first, _, _ = await connect(chat.id, alice)
    second, _, _ = await connect(chat.id, alice)
    await first.send_json_to({"type": "send", "content": "Hello both", "params": GREEDY})
    frames_a = await receive_until_end(first)
    frames_b = await receive_until_end(second)
    assert frames_a == frames_b
    assert joined_tokens(frames_a) == (await stored_reply(chat)).content
    await first.disconnect()
    await second.disconnect()


async def test_a_reply_streams_to_the_socket_while_the_database_thread_is_busy(chat, alice):
    # Every database call of the process runs on one thread. Channels hops there before each message a
    # consumer handles (to close stale connections); a frame that only forwards text must not wait there
    # behind another chat's turn or save.
    tab, _, _ = await connect(chat.id, alice)
    held, release = threading.Event(), threading.Event()

    def busy() -> None:
        held.set()
        release.wait(30)

    busy_call = asyncio.create_task(database_sync_to_async(busy)())
    try:
        assert await asyncio.to_thread(held.wait, 10)
        await publish(chat.id, {"type": "chat.start", "message_id": 1, "model": "tiny"})
        await publish(chat.id, {"type": "chat.token", "message_id": 1, "offset": 0, "text": "Hi"})
        start = await tab.receive_json_from(timeout=5)
        token = await tab.receive_json_from(timeout=5)
        assert not busy_call.done()
    finally:
        release.set()
        await busy_call
    assert (start["type"], token) == ("start", {"type": "token", "message_id": 1, "text": "Hi"})
    await tab.disconnect()


async def test_a_socket_joining_mid_reply_gets_the_text_so_far_and_the_rest(chat, alice):
    first, _, _ = await connect(chat.id, alice)
    await first.send_json_to({"type": "send", "content": "Tell me more", "params": LONG})
    early = []
    while sum(f["type"] == "token" for f in early) < 3:
        early.append(await first.receive_json_from(timeout=30))
    late, _, _ = await connect(chat.id, alice)
    resumed = [await late.receive_json_from(timeout=10)]
    while sum(f["type"] == "token" for f in resumed) < 3:  # the rest keeps coming to the late socket
        resumed.append(await late.receive_json_from(timeout=30))
    await late.send_json_to({"type": "stop"})
    resumed += await receive_until_end(late)
    assert resumed[0]["type"] == "start" and "content" in resumed[0]
    assert resumed[0]["content"].startswith(joined_tokens(early))
    reply = await stored_reply(chat)
    assert resumed[0]["content"] + joined_tokens(resumed) == reply.content
    await receive_until_end(first)
    await first.disconnect()
    await late.disconnect()


async def test_a_disconnect_does_not_stop_a_reply_others_watch(chat, alice):
    leaving, _, _ = await connect(chat.id, alice)
    staying, _, _ = await connect(chat.id, alice)
    await leaving.send_json_to({"type": "send", "content": "Go on", "params": {"temperature": 0, "max_new_tokens": 30}})
    await leaving.receive_json_from(timeout=10)
    await leaving.disconnect()
    frames = await receive_until_end(staying)
    assert frames[-1]["finish_reason"] in ("stop", "length")
    await staying.disconnect()


async def test_the_last_watcher_leaving_stops_the_reply_after_the_grace(chat, alice, settings):
    settings.CHAT_ORPHAN_GRACE = 0
    ws, _, _ = await connect(chat.id, alice)
    frames = await send_long(ws, "Talk a lot")
    reply = state.current().runner.get(chat.id)
    await ws.disconnect()
    await asyncio.wait_for(reply.task, timeout=30)
    reply = await stored_reply(chat)
    assert reply.status == "cancelled" and reply.content.startswith(joined_tokens(frames))
    assert reply.completion_tokens < 900


async def test_partial_text_is_saved_while_streaming(chat, alice, settings):
    settings.CHAT_SAVE_INTERVAL = 0
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to({"type": "send", "content": "Keep going", "params": LONG})
    frames = []
    while sum(f["type"] == "token" for f in frames) < 3:
        frames.append(await ws.receive_json_from(timeout=30))
    partial = await stored_reply(chat)
    assert partial.status == "streaming" and partial.content != ""
    await ws.send_json_to({"type": "stop"})
    await receive_until_end(ws)
    final = await stored_reply(chat)
    assert final.content.startswith(partial.content)
    await ws.disconnect()


async def test_history_is_the_stored_transcript(chat, alice):
    await sync_to_async(chat.append)("user", "Earlier question")
    await sync_to_async(chat.append)("assistant", "Earlier answer")
    history = await sync_to_async(Conversation.prompt_history)(chat)
    assert history == [
        {"role": "user", "content": "Earlier question"},
        {"role": "assistant", "content": "Earlier answer"},
    ]


async def test_waiting_requests_are_told_their_place(make_engine, alice, conversation, monkeypatch):
    """With room for one reply at a time, later requests hear their queue position."""
    engine = await sync_to_async(make_engine)(max_batch_size=1, max_queue=4)
    all_in = asyncio.Event()
    submit = engine.scheduler.submit

    def counting_submit(job):  # called on this loop by engine.stream
        submit(job)
        if engine.stats.submitted == 3:
            all_in.set()

    monkeypatch.setattr(engine.scheduler, "submit", counting_submit)
    with state.swapped(serving(engine)):
        chats = [await sync_to_async(conversation)(alice) for _ in range(3)]
        sockets = [(await connect(c.id, alice))[0] for c in chats]
        # Held between steps until all three are in the engine, so none can end
        # before the others arrive: one holds the row, two wait.
        with engine.scheduler.paused():
            for ws in sockets:
                await ws.send_json_to(
                    {"type": "send", "content": "Count to ten", "params": {"temperature": 0, "max_new_tokens": 20}}
                )
            await asyncio.wait_for(all_in.wait(), 30)
        frames = [await receive_until_end(ws) for ws in sockets]
        # The three sends reach the model in whatever order their tasks run.
        positions = sorted([f["position"] for f in fs if f["type"] == "queued"] for fs in frames)
        assert positions == [[], [1], [2, 1]]
        for fs, chat in zip(frames, chats, strict=True):
            assert fs[-1]["finish_reason"] == "length"
            assert joined_tokens(fs) == (await stored_reply(chat)).content
        for ws in sockets:
            await ws.disconnect()


async def test_a_send_to_a_deleted_conversation_is_refused(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await sync_to_async(chat.delete)()
    await ws.send_json_to({"type": "send", "content": "Anyone there?", "params": GREEDY})
    error = await ws.receive_json_from()
    assert error == {"type": "error", "code": "invalid", "message": "This conversation no longer exists."}
    assert (await ws.receive_output())["code"] == 4404
    assert not await sync_to_async(Message.objects.exists)()


async def test_the_parameters_of_a_turn_become_the_conversations(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to(
        {"type": "send", "content": "Hi", "params": {"temperature": 0, "max_new_tokens": 7, "top_p": 0.5}}
    )
    await receive_until_end(ws)
    await sync_to_async(chat.refresh_from_db)()
    assert (chat.temperature, chat.max_new_tokens, chat.top_p, chat.repetition_penalty) == (0, 7, 0.5, 1.05)
    await ws.send_json_to({"type": "regenerate", "params": {"temperature": 0, "max_new_tokens": 4}})
    frames = await receive_until_end(ws)
    assert frames[-1]["usage"]["completion_tokens"] == 4
    await sync_to_async(chat.refresh_from_db)()
    assert chat.max_new_tokens == 4
    await ws.disconnect()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_a_socket_whose_redis_layer_is_unreachable_is_told_so(chat, alice, settings):
    # redis loads with the Redis layer; its errors must then count as the layer's (frames.layer_errors).
    settings.CHANNEL_LAYERS = channel_layers(f"redis://127.0.0.1:{closed_port()}/0")
    communicator, connected, _ = await connect(chat.id, alice)
    assert connected
    frame = await communicator.receive_json_from(timeout=30)
    assert frame == {"type": "error", "code": "generation_failed", "message": LAYER_DOWN}
    assert (await communicator.receive_output(timeout=5))["type"] == "websocket.close"


async def test_a_socket_joining_after_a_reply_ended_gets_no_start_without_an_end(chat, alice, monkeypatch):
    # A reply's `end` goes out before its task is done; a socket opening between the two was sent
    # `start` and then nothing, ever (the silence `make soak` found in local mode under load).
    from conversations.live import generation

    finished, release = asyncio.Event(), asyncio.Event()
    finish = generation.finish

    async def finish_then_linger(*args, **kwargs):
        won = await finish(*args, **kwargs)
        finished.set()
        await release.wait()  # the task is not done yet: the window, held open
        return won

    monkeypatch.setattr(generation, "finish", finish_then_linger)
    first, _, _ = await connect(chat.id, alice)
    await first.send_json_to({"type": "send", "content": "Hello", "params": GREEDY})
    ended = await receive_until_end(first)
    await asyncio.wait_for(finished.wait(), 10)
    late, _, _ = await connect(chat.id, alice)
    try:
        assert await late.receive_nothing(timeout=0.5), "a start came with no end to follow it"
    finally:
        release.set()
    assert ended[-1]["type"] == "end"
    await first.disconnect()
    await late.disconnect()
