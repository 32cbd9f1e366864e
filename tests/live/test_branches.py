"""Branches: edit, regenerate and switch over real WebSockets with a tiny real model; the tree; the API."""

import pytest
from asgiref.sync import sync_to_async

from conversations.history.tree import Tree
from conversations.live import turns
from conversations.live.frames import follow
from inference import GenerationParams
from tests.live.test_consumer import GREEDY, LONG, connect, joined_tokens, receive_until_end

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def chat(engine, alice, conversation):
    return conversation(alice, title="")


@sync_to_async
def path_of(conversation) -> list[tuple[str, str]]:
    conversation.refresh_from_db()
    return [(m.role, m.content) for m in Tree.of(conversation).path()]


async def send(ws, text: str) -> list[dict]:
    await ws.send_json_to({"type": "send", "content": text, "params": GREEDY})
    return await receive_until_end(ws)


async def test_edit_adds_a_sibling_user_message_and_a_reply_on_a_new_active_branch(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    second = await send(ws, "And then?")
    edited_id = second[0]["message"]["id"]
    await ws.send_json_to({"type": "edit", "message_id": edited_id, "content": "What now?", "params": GREEDY})
    frames = await receive_until_end(ws)
    message = frames[0]["message"]
    assert frames[0]["type"] == "message" and message["content"] == "What now?"
    assert message["parent"] == first[-1]["message_id"]
    assert message["siblings"] == [edited_id, message["id"]]
    assert frames[1]["type"] == "start" and frames[1]["parent"] == message["id"]
    reply = joined_tokens(frames)
    assert await path_of(chat) == [
        ("user", "Hello"),
        ("assistant", joined_tokens(first)),
        ("user", "What now?"),
        ("assistant", reply),
    ]
    # Nothing is lost: the old branch is still stored.
    assert await sync_to_async(chat.messages.count)() == 6
    await ws.disconnect()


async def test_editing_the_first_message_makes_a_second_root(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    root = first[0]["message"]["id"]
    await ws.send_json_to({"type": "edit", "message_id": root, "content": "Hi there", "params": GREEDY})
    frames = await receive_until_end(ws)
    message = frames[0]["message"]
    assert message["parent"] is None and message["siblings"] == [root, message["id"]]
    assert [role for role, _ in await path_of(chat)] == ["user", "assistant"]
    assert (await path_of(chat))[0] == ("user", "Hi there")
    await ws.disconnect()


async def test_the_model_hears_the_active_path_only(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    second = await send(ws, "Old question")
    await ws.send_json_to({"type": "edit", "message_id": second[0]["message"]["id"], "content": "New question"})
    await receive_until_end(ws)
    await ws.disconnect()
    history = await sync_to_async(chat.prompt_history)()
    assert history == [
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": joined_tokens(first)},
        {"role": "user", "content": "New question"},
        {"role": "assistant", "content": history[-1]["content"]},
    ]
    assert "Old question" not in str(history)


async def test_switch_makes_a_branch_active_and_every_tab_hears_the_path(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    other_tab, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    await receive_until_end(other_tab)
    old_reply = first[-1]["message_id"]
    await ws.send_json_to({"type": "regenerate", "params": GREEDY})
    regenerated = await receive_until_end(ws)
    await receive_until_end(other_tab)
    follow_up = await send(ws, "More")  # continues the new variant
    await receive_until_end(other_tab)

    await ws.send_json_to({"type": "switch", "message_id": old_reply})
    for tab in (ws, other_tab):
        frame = await tab.receive_json_from(timeout=5)
        assert frame["type"] == "path"
        assert [m["id"] for m in frame["messages"]] == [first[0]["message"]["id"], old_reply]
        assert frame["messages"][1]["siblings"] == [old_reply, regenerated[-1]["message_id"]]
    # Back to the variant: down to its newest leaf (the follow-up's reply).
    await ws.send_json_to({"type": "switch", "message_id": regenerated[-1]["message_id"]})
    frame = await ws.receive_json_from(timeout=5)
    assert frame["messages"][-1]["id"] == follow_up[-1]["message_id"]
    assert len(frame["messages"]) == 4
    await other_tab.disconnect()
    await ws.disconnect()


@pytest.mark.parametrize(
    "frame, says",
    [
        ({"type": "switch"}, "message_id"),
        ({"type": "switch", "message_id": "7"}, "message_id"),
        ({"type": "switch", "message_id": True}, "message_id"),
        ({"type": "switch", "message_id": 10**9}, "no such message"),
        ({"type": "edit", "message_id": 10**9, "content": "x"}, "Only your own messages"),
        ({"type": "edit", "content": "x"}, "message_id"),
    ],
)
async def test_bad_branch_frames_are_invalid(chat, alice, frame, says):
    ws, _, _ = await connect(chat.id, alice)
    await ws.send_json_to(frame)
    error = await ws.receive_json_from(timeout=5)
    assert error["type"] == "error" and error["code"] == "invalid" and says in error["message"]
    await ws.disconnect()


async def test_editing_a_reply_or_another_conversations_message_is_invalid(chat, alice, bob, conversation):
    foreign = await sync_to_async(conversation)(bob, messages=[("user", "Bob's secret")])
    foreign_id = await sync_to_async(lambda: foreign.messages.get().id)()
    ws, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    for message_id in (first[-1]["message_id"], foreign_id):
        await ws.send_json_to({"type": "edit", "message_id": message_id, "content": "changed"})
        error = await ws.receive_json_from(timeout=5)
        assert error["code"] == "invalid"
        await ws.send_json_to({"type": "switch", "message_id": foreign_id})
        error = await ws.receive_json_from(timeout=5)
        assert error["code"] == "invalid"
    assert await sync_to_async(lambda: foreign.messages.get().content)() == "Bob's secret"
    assert await sync_to_async(chat.messages.count)() == 2
    await ws.disconnect()


async def test_switch_edit_and_regenerate_are_busy_while_a_reply_streams(chat, alice):
    ws, _, _ = await connect(chat.id, alice)
    first = await send(ws, "Hello")
    user_id = first[0]["message"]["id"]
    await ws.send_json_to({"type": "send", "content": "Tell me a long story", "params": LONG})
    assert (await ws.receive_json_from(timeout=5))["type"] == "message"
    assert (await ws.receive_json_from(timeout=5))["type"] == "start"
    for frame in (
        {"type": "switch", "message_id": user_id},
        {"type": "edit", "message_id": user_id, "content": "changed"},
        {"type": "regenerate"},
    ):
        await ws.send_json_to(frame)
        while (reply := await ws.receive_json_from(timeout=5))["type"] in ("token", "queued"):
            pass
        assert reply["type"] == "error" and reply["code"] == "busy"
    await ws.send_json_to({"type": "stop"})
    await receive_until_end(ws)
    await ws.disconnect()


async def test_a_turn_without_a_socket_edits_too(chat):
    params = GenerationParams.from_dict({"temperature": 0, "max_new_tokens": 8})

    async def run(kind: str, text: str, message_id=None) -> turns.Turn:
        async with follow(chat.id) as following:
            turn = await turns.start(chat.id, kind, params, text, message_id=message_id)
            assert [f async for f in following.until_end(turn.message_id)][-1]["status"] == "complete"
        return turn

    turn = await run("send", "Hello")
    edit = await run("edit", "Hi", turn.user_message["id"])
    assert edit.history == [{"role": "user", "content": "Hi"}]
    assert edit.user_message["siblings"] == [turn.user_message["id"], edit.user_message["id"]]
